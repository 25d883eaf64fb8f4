//! Batch normalisation without affine parameters (`nn.BatchNorm1d(d, affine=False)`).
//!
//! Burn's `BatchNorm` always carries γ/β as trainable parameters. SimSiam's last projector
//! layer has none, so this module holds only the running statistics: there is nothing for
//! the optimiser or the weight decay to touch. Its behaviour otherwise mirrors Burn's
//! `BatchNorm` (batch statistics on an autodiff backend, running statistics on the inner
//! backend, biased running variance).

use burn::config::Config;
use burn::module::{Module, RunningState};
use burn::tensor::{backend::Backend, Tensor};

/// Configuration of [`BatchNormNoAffine`].
#[derive(Config, Debug)]
pub struct BatchNormNoAffineConfig {
    /// Number of features (channels).
    pub num_features: usize,
    /// Added to the variance (PyTorch: 1e-5).
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Running-statistics momentum (PyTorch: 0.1).
    #[config(default = 0.1)]
    pub momentum: f64,
}

impl BatchNormNoAffineConfig {
    /// Zero running mean, unit running variance.
    pub fn init<B: Backend>(&self, device: &B::Device) -> BatchNormNoAffine<B> {
        BatchNormNoAffine {
            running_mean: RunningState::new(Tensor::zeros([self.num_features], device)),
            running_var: RunningState::new(Tensor::ones([self.num_features], device)),
            momentum: self.momentum,
            epsilon: self.epsilon,
        }
    }
}

/// `y = (x − mean) / sqrt(var + ε)` over the batch of a `[N, C]` input; no γ, no β.
#[derive(Module, Debug)]
pub struct BatchNormNoAffine<B: Backend> {
    /// Running mean (used on the inner, non-autodiff backend).
    pub running_mean: RunningState<Tensor<B, 1>>,
    /// Running variance.
    pub running_var: RunningState<Tensor<B, 1>>,
    /// Running-statistics momentum.
    pub momentum: f64,
    /// Variance floor.
    pub epsilon: f64,
}

impl<B: Backend> BatchNormNoAffine<B> {
    /// `[N, C] → [N, C]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let device = x.device();
        let [_, c] = x.dims();
        let (mean, var) = if B::ad_enabled(&device) {
            let mean = x.clone().mean_dim(0); // [1, C]
            let var = x.clone().sub(mean.clone()).square().mean_dim(0);
            let m = self.momentum;
            let rm = self.running_mean.value_sync().to_device(&device);
            let rv = self.running_var.value_sync().to_device(&device);
            self.running_mean.update(
                rm.mul_scalar(1.0 - m)
                    .add(mean.clone().detach().reshape([c]).mul_scalar(m))
                    .detach(),
            );
            self.running_var.update(
                rv.mul_scalar(1.0 - m)
                    .add(var.clone().detach().reshape([c]).mul_scalar(m))
                    .detach(),
            );
            (mean, var)
        } else {
            (
                self.running_mean.value().to_device(&device).reshape([1, c]),
                self.running_var.value().to_device(&device).reshape([1, c]),
            )
        };
        x.sub(mean).div(var.add_scalar(self.epsilon).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;

    #[test]
    fn normalises_with_batch_statistics_when_training() {
        let bn = BatchNormNoAffineConfig::new(2)
            .with_epsilon(0.0)
            .init::<AB>(&dev());
        // column 0: mean 2, var 1 → (−1, 1); column 1: mean 0, var 4 → (−1, 1)
        let y = bn.forward(t2::<AB>(&[&[1.0, -2.0], &[3.0, 2.0]]));
        assert_close(&vals(y), &[-1.0, -1.0, 1.0, 1.0], 1e-6);
        // running = 0.9·(0, 1) + 0.1·(2, 0) and 0.9·(1, 1) + 0.1·(1, 4)
        assert_close(&vals(bn.running_mean.value_sync()), &[0.2, 0.0], 1e-6);
        assert_close(&vals(bn.running_var.value_sync()), &[1.0, 1.3], 1e-6);
        // only the two running statistics: no γ/β
        assert_eq!(bn.num_params(), 2 + 2);
    }

    #[test]
    fn uses_running_statistics_on_the_inner_backend() {
        let bn = BatchNormNoAffine::<B> {
            running_mean: RunningState::new(Tensor::from_floats([1.0, 0.0], &dev())),
            running_var: RunningState::new(Tensor::from_floats([4.0, 1.0], &dev())),
            momentum: 0.1,
            epsilon: 0.0,
        };
        // (3 − 1)/√4, (5 − 0)/√1
        let y = bn.forward(t2::<B>(&[&[3.0, 5.0]]));
        assert_close(&vals(y), &[1.0, 5.0], 1e-6);
    }
}
