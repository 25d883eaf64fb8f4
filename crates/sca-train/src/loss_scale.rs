//! Dynamic loss scaling for f16 training, as PyTorch's `GradScaler` does it.
//!
//! f16 flushes values below about 6e-8 to zero, and gradients of a ResNet often sit there.
//! The loss is multiplied by a large scale before the backward pass, so the gradients are
//! computed in range, and divided back out before the optimiser sees them. When a step
//! overflows (an inf or NaN gradient) it is skipped and the scale halved; after
//! [`GROWTH_INTERVAL`] clean steps in a row the scale doubles again.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};

/// The first scale (PyTorch's default).
pub const INITIAL_SCALE: f64 = 65536.0;
/// Clean steps before the scale doubles (PyTorch's default).
pub const GROWTH_INTERVAL: usize = 2000;

#[derive(Clone, Debug, PartialEq)]
pub struct LossScale {
    pub scale: f64,
    /// Clean steps since the scale last changed.
    pub good_steps: usize,
}

impl Default for LossScale {
    fn default() -> Self {
        Self { scale: INITIAL_SCALE, good_steps: 0 }
    }
}

impl LossScale {
    /// After a step: halves on overflow (never below 1), doubles after enough clean steps.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
        }
    }
}

/// Divides gradients by the loss scale, module by module, and says at the end whether all
/// of them were finite. One number is read back from the device for the whole step: the
/// sum over all gradients, which is finite exactly when no gradient holds an inf or NaN
/// (unscaled gradients are nowhere near f32's overflow).
pub struct Unscaler<B: AutodiffBackend> {
    inv: f64,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> Unscaler<B> {
    pub fn new(scale: f64) -> Self {
        Self { inv: 1.0 / scale, total: None }
    }

    /// `grads` (of `module`'s parameters) divided by the scale.
    pub fn unscale<M: AutodiffModule<B>>(&mut self, module: &M, mut grads: GradientsParams) -> GradientsParams {
        module.visit(&mut Visit::<B> { grads: &mut grads, inv: self.inv, total: &mut self.total });
        grads
    }

    /// Whether every gradient unscaled so far is finite.
    pub fn all_finite(self) -> bool {
        self.total.is_none_or(|t| t.into_scalar().elem::<f64>().is_finite())
    }
}

struct Visit<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    inv: f64,
    total: &'a mut Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Visit<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let g = g.mul_scalar(self.inv);
            let s = g.clone().sum();
            *self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
            self.grads.register::<B::InnerBackend, D>(param.id, g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{Distribution, TensorData};

    type B = Autodiff<Flex>;

    #[test]
    fn the_scale_halves_on_overflow_and_doubles_after_clean_steps() {
        let mut s = LossScale::default();
        s.update(false);
        assert_eq!(s, LossScale { scale: 32768.0, good_steps: 0 });
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(true);
        }
        assert_eq!(s.scale, 32768.0);
        s.update(true);
        assert_eq!(s, LossScale { scale: 65536.0, good_steps: 0 });
        let mut tiny = LossScale { scale: 1.5, good_steps: 7 };
        tiny.update(false);
        tiny.update(false);
        assert_eq!(tiny, LossScale { scale: 1.0, good_steps: 0 });
    }

    #[derive(Module, Debug)]
    struct Two<B: burn::tensor::backend::Backend> {
        a: Linear<B>,
        b: Linear<B>,
    }

    fn grads_of(m: &Two<B>, x: Tensor<B, 2>, factor: f32) -> GradientsParams {
        let loss = m.b.forward(m.a.forward(x)).sum().mul_scalar(factor);
        GradientsParams::from_grads(loss.backward(), m)
    }

    #[test]
    fn unscaled_gradients_equal_the_plain_ones_and_overflow_is_seen() {
        let device = Default::default();
        let m = Two::<B> { a: LinearConfig::new(3, 4).init(&device), b: LinearConfig::new(4, 2).init(&device) };
        let x = Tensor::<B, 2>::random([5, 3], Distribution::Normal(0.0, 1.0), &device);
        let mut plain = grads_of(&m, x.clone(), 1.0);
        let mut u = Unscaler::<B>::new(1024.0);
        let mut unscaled = u.unscale(&m, grads_of(&m, x.clone(), 1024.0));
        assert!(u.all_finite());
        let tol = burn::tensor::Tolerance::<f32>::rel_abs(1e-6, 1e-7);
        for id in [m.a.weight.id, m.b.weight.id] {
            let want = plain.remove::<Flex, 2>(id).expect("weight gradient").into_data();
            unscaled.remove::<Flex, 2>(id).expect("weight gradient").into_data().assert_approx_eq::<f32>(&want, tol);
        }
        let id = m.a.bias.as_ref().unwrap().id;
        let want = plain.remove::<Flex, 1>(id).expect("bias gradient").into_data();
        unscaled.remove::<Flex, 1>(id).expect("bias gradient").into_data().assert_approx_eq::<f32>(&want, tol);
        // An inf input makes the gradients of `b` overflow: seen, whatever the scale.
        let bad = Tensor::<B, 2>::from_data(TensorData::new(vec![f32::INFINITY; 15], [5, 3]), &device);
        let mut u = Unscaler::<B>::new(1.0);
        u.unscale(&m, grads_of(&m, bad, 1.0));
        assert!(!u.all_finite());
    }
}
