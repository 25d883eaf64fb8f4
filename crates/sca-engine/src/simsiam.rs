//! SimSiam projector and predictor (Chen & He 2021; `simsiam/builder.py`).

use burn::config::Config;
use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use sca_kernels::gemm_linear;

use crate::norm::{batch_norm_1d, BatchNormNoAffine, BatchNormNoAffineConfig};

/// Configuration of [`SimSiamHead`]. Defaults are the paper's (ResNet-50); small runs use
/// e.g. 512/128.
#[derive(Config, Debug)]
pub struct SimSiamHeadConfig {
    /// Pooled backbone feature size.
    pub in_dim: usize,
    /// Width of the projector's two hidden layers.
    #[config(default = 2048)]
    pub proj_hidden_dim: usize,
    /// Embedding size (projector output and predictor output).
    #[config(default = 2048)]
    pub out_dim: usize,
    /// Predictor bottleneck width.
    #[config(default = 512)]
    pub pred_hidden_dim: usize,
}

impl SimSiamHeadConfig {
    /// Builds the head.
    pub fn init<B: Backend>(&self, device: &B::Device) -> SimSiamHead<B> {
        let lin = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        let (h, d, ph) = (self.proj_hidden_dim, self.out_dim, self.pred_hidden_dim);
        SimSiamHead {
            proj_fc1: lin(self.in_dim, h, false),
            proj_bn1: BatchNormConfig::new(h).init(device),
            proj_fc2: lin(h, h, false),
            proj_bn2: BatchNormConfig::new(h).init(device),
            // SimSiam keeps this layer's bias but freezes it (`requires_grad = False`): a bias
            // in front of a batch norm is cancelled by the mean subtraction. Dropping it is
            // the same function with one parameter fewer.
            proj_fc3: lin(h, d, false),
            proj_bn3: BatchNormNoAffineConfig::new(d).init(device),
            pred_fc1: lin(d, ph, false),
            pred_bn1: BatchNormConfig::new(ph).init(device),
            pred_fc2: lin(ph, d, true),
        }
    }
}

/// Projector `in → h (BN, ReLU) → h (BN, ReLU) → d (BN without affine)` and predictor
/// `d → ph (BN, ReLU) → d`.
///
/// "BN without affine" is [`BatchNormNoAffine`]: a batch norm with running statistics and
/// no γ/β at all, rather than a Burn `BatchNorm` whose γ/β would have to be kept out of the
/// optimiser by hand.
#[derive(Module, Debug)]
pub struct SimSiamHead<B: Backend> {
    /// Projector layer 1.
    pub proj_fc1: Linear<B>,
    /// Projector BN 1.
    pub proj_bn1: BatchNorm<B>,
    /// Projector layer 2.
    pub proj_fc2: Linear<B>,
    /// Projector BN 2.
    pub proj_bn2: BatchNorm<B>,
    /// Projector layer 3.
    pub proj_fc3: Linear<B>,
    /// Projector BN 3 (no affine).
    pub proj_bn3: BatchNormNoAffine<B>,
    /// Predictor layer 1.
    pub pred_fc1: Linear<B>,
    /// Predictor BN.
    pub pred_bn1: BatchNorm<B>,
    /// Predictor layer 2.
    pub pred_fc2: Linear<B>,
}

impl<B: Backend> SimSiamHead<B> {
    /// `features [N, in] → (z [N, d], p [N, d])`. Call once per view; the loss is
    /// `sca_losses::simsiam_loss(p1, p2, z1, z2)`, which detaches the z's.
    pub fn forward(&self, features: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let z = self.project(features);
        let p = self.predict(z.clone());
        (z, p)
    }

    /// The projector alone.
    pub fn project(&self, features: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = relu(batch_norm_1d(&self.proj_bn1, gemm_linear(&self.proj_fc1, features)));
        let x = relu(batch_norm_1d(&self.proj_bn2, gemm_linear(&self.proj_fc2, x)));
        self.proj_bn3.forward(gemm_linear(&self.proj_fc3, x))
    }

    /// The predictor alone.
    pub fn predict(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = relu(batch_norm_1d(&self.pred_bn1, gemm_linear(&self.pred_fc1, z)));
        gemm_linear(&self.pred_fc2, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use burn::optim::GradientsParams;
    use sca_losses::simsiam_loss;

    fn small() -> SimSiamHeadConfig {
        SimSiamHeadConfig::new(8)
            .with_proj_hidden_dim(12)
            .with_out_dim(6)
            .with_pred_hidden_dim(3)
    }

    #[test]
    fn shapes_and_parameter_count() {
        let head = small().init::<AB>(&dev());
        let (z, p) = head.forward(features(5, 8, 7));
        assert_eq!(z.dims(), [5, 6]);
        assert_eq!(p.dims(), [5, 6]);
        // Burn's num_params also counts BN running mean/var: an affine BN of C features
        // counts 4C, the affine-free one 2C.
        // 8·12 + 4·12 + 12·12 + 4·12 + 12·6 + 2·6 + 6·3 + 4·3 + 3·6 + 6
        assert_eq!(
            head.num_params(),
            96 + 48 + 144 + 48 + 72 + 12 + 18 + 12 + 18 + 6
        );
    }

    #[test]
    fn projector_output_is_standardised_per_feature() {
        // Training mode, no affine: every output feature has batch mean 0 and variance 1
        // (up to ε = 1e-5).
        let head = small().init::<AB>(&dev());
        let (z, _) = head.forward(features(16, 8, 9));
        let z = z.inner();
        assert_close(&vals(z.clone().mean_dim(0)), &[0.0; 6], 1e-5);
        let var = vals(z.square().mean_dim(0));
        assert!(
            var.iter().all(|v| (v - 1.0).abs() < 1e-2),
            "variances {var:?}"
        );
    }

    #[test]
    fn loss_reaches_every_parameter() {
        let head = small().init::<AB>(&dev());
        let (z1, p1) = head.forward(features(5, 8, 10));
        let (z2, p2) = head.forward(features(5, 8, 11));
        let grads = GradientsParams::from_grads(simsiam_loss(p1, p2, z1, z2).backward(), &head);
        // 12 parameter tensors: 3 projector weights, γ/β of 2 projector BNs, predictor
        // fc1 weight, fc2 weight and bias, γ/β of the predictor BN (the last BN has none)
        assert_eq!(grads.len(), 3 + 4 + 3 + 2);
    }
}
