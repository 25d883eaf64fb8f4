//! Batch normalisation without affine parameters (`nn.BatchNorm1d(d, affine=False)`).
//!
//! Burn's `BatchNorm` always carries γ/β as trainable parameters. SimSiam's last projector
//! layer has none, so this module holds only the running statistics: there is nothing for
//! the optimiser or the weight decay to touch. Its behaviour otherwise mirrors Burn's
//! `BatchNorm` (batch statistics on an autodiff backend, running statistics on the inner
//! backend, biased running variance).

use burn::config::Config;
use burn::module::{Module, RunningState};
use burn::nn::BatchNorm;
use burn::tensor::{backend::Backend, Tensor};
use sca_dist::sync_bn;

/// `bn.forward(x)` for `[N, C]` input, except that in training mode with synchronised batch
/// norm installed ([`sync_bn`]) the statistics are those of the global batch; the running
/// statistics are updated as Burn does (biased variance).
pub fn batch_norm_1d<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let device = x.device();
    let sync = sync_bn::get::<B>().filter(|_| B::ad_enabled(&device));
    let Some((replicas, sum)) = sync else {
        return bn.forward(x);
    };
    let [_, c] = x.dims();
    let (mean, var) = sync_bn::global_stats(x.clone(), replicas, &sum);
    update_running(&bn.running_mean, &bn.running_var, bn.momentum, &mean, &var);
    let scale = bn.gamma.val().reshape([1, c]) / var.add_scalar(bn.epsilon).sqrt();
    (x - mean) * scale + bn.beta.val().reshape([1, c])
}

/// `running = (1 − m)·running + m·batch` for both statistics (`[1, C]` batch values).
fn update_running<B: Backend>(rm: &RunningState<Tensor<B, 1>>, rv: &RunningState<Tensor<B, 1>>, m: f64, mean: &Tensor<B, 2>, var: &Tensor<B, 2>) {
    let device = mean.device();
    let c = mean.dims()[1];
    let step = |state: &RunningState<Tensor<B, 1>>, batch: &Tensor<B, 2>| {
        let old = state.value_sync().to_device(&device);
        state.update(old.mul_scalar(1.0 - m).add(batch.clone().detach().reshape([c]).mul_scalar(m)).detach());
    };
    step(rm, mean);
    step(rv, var);
}

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
            let (mean, var) = match sync_bn::get::<B>() {
                Some((replicas, sum)) => sync_bn::global_stats(x.clone(), replicas, &sum),
                None => {
                    let mean = x.clone().mean_dim(0); // [1, C]
                    let var = x.clone().sub(mean.clone()).square().mean_dim(0);
                    (mean, var)
                }
            };
            update_running(&self.running_mean, &self.running_var, self.momentum, &mean, &var);
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
