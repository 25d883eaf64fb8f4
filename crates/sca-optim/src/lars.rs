//! LARS/LARC as SwAV uses it: NVIDIA apex `LARC` wrapped around `torch.optim.SGD`.
//!
//! For each parameter `p` with gradient `g`, apex computes, with the *original* `g`:
//!
//! ```text
//! if ‖p‖ ≠ 0 and ‖g‖ ≠ 0:
//!     a = trust · ‖p‖ / (‖g‖ + wd·‖p‖ + eps)
//!     if clip: a = min(a / lr, 1)          # so that lr·a = min(a_unclipped, lr)
//!     g = (g + wd·p) · a                   # weight decay folded in, then adapted
//! # (else g is left untouched: no adaptation and no weight decay, exactly as apex)
//! buf = momentum·buf + g                   # SGD, dampening 0, no Nesterov; buf = g at step 1
//! p = p − lr · buf                         # SGD's own weight decay is 0: LARC absorbed it
//! ```
//!
//! On the CUDA backend each step is two kernel launches (`sca_kernels::lars`), the same
//! arithmetic in the same order; elsewhere it is the tensor operations below.
//!
//! With `lars: false` the same type is plain momentum SGD in PyTorch's form
//! (`g += wd·p`, dampening 0), so the project has one optimiser type. Burn's own SGD
//! momentum defaults to dampening 0.1, which is why it is not used.

use burn::config::Config;
use burn::module::AutodiffModule;
use burn::optim::{adaptor::OptimizerAdaptor, LearningRate, SimpleOptimizer};
use burn::record::Record;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use sca_kernels::lars::{lars_step, LarsStep};

/// Configuration of [`Lars`]. Defaults are SwAV's (`main_swav.py`).
#[derive(Config, Debug)]
pub struct LarsConfig {
    /// Momentum of the inner SGD (dampening 0, no Nesterov). 0 disables the buffer.
    #[config(default = 0.9)]
    pub momentum: f64,
    /// Weight decay (SwAV and the paper: 1e-6).
    #[config(default = 1e-6)]
    pub weight_decay: f64,
    /// Apply the LARC adaptation. `false` gives plain momentum SGD.
    #[config(default = true)]
    pub lars: bool,
    /// Trust coefficient η of LARS (SwAV: 0.001).
    #[config(default = 0.001)]
    pub trust_coefficient: f64,
    /// apex's clipping mode: the effective rate is `min(η‖p‖/(…), lr)` instead of
    /// `lr·η‖p‖/(…)`. SwAV's `main_swav.py` constructs `LARC(..., clip=False)`, hence the
    /// default; both modes are implemented and tested.
    #[config(default = false)]
    pub clip: bool,
    /// Denominator floor of apex (1e-8).
    #[config(default = 1e-8)]
    pub eps: f64,
    /// Skip both the adaptation and the weight decay for 1-D parameters (biases and BN γ/β),
    /// as in SimCLR/BYOL-style LARS. Off in SwAV.
    #[config(default = false)]
    pub exclude_bias_and_bn: bool,
}

impl LarsConfig {
    /// Plain momentum SGD (PyTorch semantics: dampening 0, `g += wd·p`) through the same type.
    pub fn sgd(momentum: f64, weight_decay: f64) -> Self {
        Self::new()
            .with_lars(false)
            .with_momentum(momentum)
            .with_weight_decay(weight_decay)
    }

    /// The simple optimiser on its own (one parameter at a time; mostly for tests).
    pub fn build<B: Backend>(&self) -> Lars<B> {
        Lars {
            config: self.clone(),
            _backend: core::marker::PhantomData,
        }
    }

    /// The optimiser for module `M` on the autodiff backend `B`: an
    /// `Optimizer<M, B>` whose record (`to_record`/`load_record`) holds the momentum buffers.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
    ) -> OptimizerAdaptor<Lars<B::InnerBackend>, M, B> {
        OptimizerAdaptor::from(self.build::<B::InnerBackend>())
    }
}

/// LARC (apex, as SwAV) or plain SGD with momentum; see the module docs for the update.
#[derive(Clone, Debug)]
pub struct Lars<B: Backend> {
    config: LarsConfig,
    _backend: core::marker::PhantomData<B>,
}

/// Per-parameter state: the momentum buffer of the inner SGD.
#[derive(Record, Clone, Debug)]
pub struct LarsState<B: Backend, const D: usize> {
    /// `buf` of PyTorch's SGD.
    pub momentum_buffer: Tensor<B, D>,
}

impl<B: Backend> Lars<B> {
    /// The configuration this optimiser was built from.
    pub fn config(&self) -> &LarsConfig {
        &self.config
    }

    /// apex LARC: `(g + wd·p)·a` where both norms are non-zero, `g` unchanged otherwise.
    /// Stays on the device (no host sync per parameter).
    fn larc<const D: usize>(
        &self,
        lr: f64,
        p: &Tensor<B, D>,
        g: Tensor<B, D>,
        wd: f64,
    ) -> Tensor<B, D> {
        let c = &self.config;
        let p_norm = p.clone().square().sum().sqrt(); // [1]
        let g_norm = g.clone().square().sum().sqrt();
        let denom = g_norm
            .clone()
            .add(p_norm.clone().mul_scalar(wd))
            .add_scalar(c.eps);
        let mut adaptive = p_norm.clone().mul_scalar(c.trust_coefficient).div(denom);
        if c.clip {
            adaptive = if lr > 0.0 {
                adaptive.div_scalar(lr).clamp_max(1.0)
            } else {
                // apex would divide by zero; with lr = 0 the step is zero whatever the factor.
                adaptive.ones_like()
            };
        }
        let active = p_norm.greater_elem(0.0).bool_and(g_norm.greater_elem(0.0));
        // mask_where (not a 0/1 product) so that an inactive branch can never leak a NaN.
        let factor = adaptive.ones_like().mask_where(active.clone(), adaptive);
        let decay = factor
            .zeros_like()
            .mask_where(active, factor.ones_like().mul_scalar(wd));
        let shape = [1; D];
        g.add(p.clone().mul(decay.reshape(shape)))
            .mul(factor.reshape(shape))
    }
}

impl<B: Backend> SimpleOptimizer<B> for Lars<B> {
    type State<const D: usize> = LarsState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let c = &self.config;
        // 1-D parameters are biases and BN γ/β.
        let excluded = c.exclude_bias_and_bn && D == 1;
        let wd = if excluded { 0.0 } else { c.weight_decay };

        // On the GPU backends: the same step in two kernel launches instead of ~30.
        let fused = LarsStep {
            lr,
            weight_decay: wd,
            momentum: c.momentum,
            lars: c.lars && !excluded,
            trust_coefficient: c.trust_coefficient,
            clip: c.clip,
            eps: c.eps,
        };
        let (tensor, grad, state) = match lars_step(tensor, grad, state.map(|s| s.momentum_buffer), &fused) {
            Ok((p, buf)) => return (p, buf.map(|momentum_buffer| LarsState { momentum_buffer })),
            Err((p, g, buf)) => (p, g, buf.map(|momentum_buffer| LarsState { momentum_buffer })),
        };

        let grad = if c.lars && !excluded {
            self.larc(lr, &tensor, grad, wd)
        } else if wd != 0.0 {
            grad.add(tensor.clone().mul_scalar(wd))
        } else {
            grad
        };

        let (update, state) = if c.momentum != 0.0 {
            let buf = match state {
                Some(s) => s.momentum_buffer.mul_scalar(c.momentum).add(grad),
                None => grad,
            };
            (
                buf.clone(),
                Some(LarsState {
                    momentum_buffer: buf,
                }),
            )
        } else {
            (grad, None)
        };
        (tensor.sub(update.mul_scalar(lr)), state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        LarsState {
            momentum_buffer: state.momentum_buffer.to_device(device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{flex::FlexDevice, Autodiff, Flex};
    use burn::module::Param;
    use burn::nn::Linear;
    use burn::optim::{GradientsParams, Optimizer};
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
    use burn::tensor::TensorData;

    type B = Flex;
    type AB = Autodiff<Flex>;

    fn t<const D: usize>(values: &[f32], shape: [usize; D]) -> Tensor<B, D> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), shape),
            &FlexDevice,
        )
    }

    fn vals<Bk: Backend, const D: usize>(x: Tensor<Bk, D>) -> Vec<f32> {
        x.into_data().convert::<f32>().to_vec::<f32>().unwrap()
    }

    #[track_caller]
    fn assert_close(got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!(((*g as f64) - w).abs() <= tol, "got {got:?}, want {want:?}");
        }
    }

    /// One step from no state on a [1, 2] (2-D) parameter.
    fn check2(config: &LarsConfig, lr: f64, p: [f32; 2], g: [f32; 2], want: [f64; 2]) {
        let (p, _) = config
            .build::<B>()
            .step(lr, t(&p, [1, 2]), t(&g, [1, 2]), None);
        assert_close(&vals(p), &want, 1e-6);
    }

    /// One step from no state on a 1-D parameter (a bias or BN γ/β).
    fn check1(config: &LarsConfig, lr: f64, p: [f32; 2], g: [f32; 2], want: [f64; 2]) {
        let (p, _) = config.build::<B>().step(lr, t(&p, [2]), t(&g, [2]), None);
        assert_close(&vals(p), &want, 1e-6);
    }

    fn larc(clip: bool, exclude: bool) -> LarsConfig {
        LarsConfig::new()
            .with_weight_decay(0.1)
            .with_clip(clip)
            .with_exclude_bias_and_bn(exclude)
    }

    #[test]
    fn larc_single_steps() {
        // p = (3,4), ‖p‖ = 5; g = (0.6,0.8), ‖g‖ = 1; wd = 0.1, η = 0.001.
        // a = 0.001·5/(1 + 0.1·5) = 1/300; g' = (g + 0.1p)·a = (0.9, 1.2)/300 = (0.003, 0.004)
        // lr 0.5, first step buf = g': p − 0.5·g' = (2.9985, 3.998)
        check2(
            &larc(false, false),
            0.5,
            [3.0, 4.0],
            [0.6, 0.8],
            [2.9985, 3.998],
        );
        // lr 0.001 without clip: p − 0.001·(0.003, 0.004)
        check2(
            &larc(false, false),
            0.001,
            [3.0, 4.0],
            [0.6, 0.8],
            [3.0 - 3e-6, 4.0 - 4e-6],
        );
        // clip, a/lr = (1/300)/0.5 = 1/150 < 1 kept: g' = (0.9,1.2)/150; p − 0.5·g' = (2.997, 3.996)
        check2(
            &larc(true, false),
            0.5,
            [3.0, 4.0],
            [0.6, 0.8],
            [2.997, 3.996],
        );
        // clip, a/lr = (1/300)/0.001 = 3.33 → 1: g' = (0.9, 1.2); p − 0.001·g'
        check2(
            &larc(true, false),
            0.001,
            [3.0, 4.0],
            [0.6, 0.8],
            [2.9991, 3.9988],
        );
        // ‖p‖ = 0: factor 1 and no decay (apex skips the block): p − 0.5·g
        check2(
            &larc(false, false),
            0.5,
            [0.0, 0.0],
            [1.0, 0.0],
            [-0.5, 0.0],
        );
        // ‖g‖ = 0: g stays 0, no weight decay either: p unchanged
        check2(&larc(false, false), 0.5, [3.0, 4.0], [0.0, 0.0], [3.0, 4.0]);
        // 1-D parameter, not excluded: adapted like any other
        check1(
            &larc(false, false),
            0.5,
            [3.0, 4.0],
            [0.6, 0.8],
            [2.9985, 3.998],
        );
        // 1-D parameter, excluded: plain step p − 0.5·g, no decay: (2.7, 3.6)
        check1(&larc(false, true), 0.5, [3.0, 4.0], [0.6, 0.8], [2.7, 3.6]);
        // 2-D parameter with exclusion on: still adapted
        check2(
            &larc(false, true),
            0.5,
            [3.0, 4.0],
            [0.6, 0.8],
            [2.9985, 3.998],
        );
    }

    #[test]
    fn sgd_single_steps() {
        // Plain SGD: p − lr·(g + wd·p) = (1,2) − 0.1·(1.1, 1.2)
        check2(
            &LarsConfig::sgd(0.9, 0.1),
            0.1,
            [1.0, 2.0],
            [1.0, 1.0],
            [0.89, 1.88],
        );
        check2(
            &LarsConfig::sgd(0.9, 0.0),
            0.1,
            [1.0, 2.0],
            [1.0, 1.0],
            [0.9, 1.9],
        );
        // exclusion also drops the decay of 1-D parameters in SGD mode
        let sgd_excl = LarsConfig::sgd(0.9, 0.1).with_exclude_bias_and_bn(true);
        check1(&sgd_excl, 0.1, [1.0, 2.0], [1.0, 1.0], [0.9, 1.9]);
        check2(&sgd_excl, 0.1, [1.0, 2.0], [1.0, 1.0], [0.89, 1.88]);
    }

    /// Two steps with the same gradient, carrying the state.
    fn check_two(config: &LarsConfig, lr: f64, p: [f32; 2], g: [f32; 2], want: [f64; 2]) {
        let opt = config.build::<B>();
        let (p1, s) = opt.step(lr, t(&p, [1, 2]), t(&g, [1, 2]), None);
        let (p2, _) = opt.step(lr, p1, t(&g, [1, 2]), s);
        assert_close(&vals(p2), &want, 1e-6);
    }

    #[test]
    fn momentum_over_two_steps() {
        // SGD, wd 0.1, lr 0.1, g = (1,1): step 1 g' = (1.1, 1.2) = buf, p1 = (0.89, 1.88);
        // step 2 g' = (1.089, 1.188), buf = 0.9·(1.1,1.2) + g' = (2.079, 2.268),
        // p2 = p1 − 0.1·buf = (0.6821, 1.6532)
        check_two(
            &LarsConfig::sgd(0.9, 0.1),
            0.1,
            [1.0, 2.0],
            [1.0, 1.0],
            [0.6821, 1.6532],
        );
        // momentum 0: no buffer, two independent steps: (1,2) − 2·0.1·(1,1)
        check_two(
            &LarsConfig::sgd(0.0, 0.0),
            0.1,
            [1.0, 2.0],
            [1.0, 1.0],
            [0.8, 1.8],
        );
        // LARC, lr 0.5: p1 = 0.9995·(3,4), buf1 = (0.003, 0.004); ‖p1‖ = 4.9975,
        // a2 = 0.001·4.9975/(1 + 0.49975), g2 = (g + 0.1·p1)·a2 = (0.0029985, 0.003998),
        // buf2 = 0.9·buf1 + g2 = (0.0056985, 0.007598), p2 = p1 − 0.5·buf2
        check_two(
            &larc(false, false),
            0.5,
            [3.0, 4.0],
            [0.6, 0.8],
            [2.99565075, 3.994201],
        );
    }

    fn linear(w: [f32; 2], b: f32) -> Linear<AB> {
        let dev = FlexDevice;
        Linear {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(w.to_vec(), [2, 1]),
                &dev,
            )),
            bias: Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![b], [1]),
                &dev,
            ))),
        }
    }

    /// loss = Σ (x·W + b) over x = [[1, 2]]: ∂W = (1, 2), ∂b = 1.
    fn grads(model: &Linear<AB>) -> GradientsParams {
        let x = Tensor::<AB, 2>::from_data(
            TensorData::new(vec![1.0f32, 2.0], [1, 2]),
            &FlexDevice,
        );
        GradientsParams::from_grads(model.forward(x).sum().backward(), model)
    }

    #[test]
    fn through_the_optimizer_trait_with_checkpointed_state() {
        let config = LarsConfig::sgd(0.9, 0.0);
        let mut optim = config.init::<AB, Linear<AB>>();
        let model = linear([1.0, 1.0], 0.0);
        let g = grads(&model);
        let model = optim.step(0.1, model, g);
        // W − 0.1·(1,2), b − 0.1·1
        assert_close(&vals(model.weight.val()), &[0.9, 0.8], 1e-6);
        assert_close(&vals(model.bias.as_ref().unwrap().val()), &[-0.1], 1e-6);

        // Save the momentum buffers through a recorder and restore them into a fresh
        // optimiser: the next step must match the uninterrupted one exactly.
        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        let bytes = Recorder::<AB>::record(&recorder, optim.to_record(), ()).unwrap();
        let restored = Recorder::<AB>::load(&recorder, bytes, &FlexDevice).unwrap();
        let mut resumed = config.init::<AB, Linear<AB>>().load_record(restored);

        let g1 = grads(&model);
        let g2 = grads(&model);
        let a = optim.step(0.1, model.clone(), g1);
        let b = resumed.step(0.1, model, g2);
        // buf = 0.9·(1,2) + (1,2) = (1.9, 3.8): W = (0.9, 0.8) − 0.1·buf = (0.71, 0.42)
        assert_close(&vals(a.weight.val()), &[0.71, 0.42], 1e-6);
        assert_eq!(vals(a.weight.val()), vals(b.weight.val()));
        assert_eq!(vals(a.bias.unwrap().val()), vals(b.bias.unwrap().val()));
    }
}
