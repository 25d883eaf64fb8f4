//! Attention mask β, explanation maps and the cluster classifier.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{backend::Backend, Tensor};
use sca_kernels::{gemm_conv2d, gemm_linear};

#[derive(Config, Debug)]
pub struct AttentionHeadConfig {
    /// D, channels of the tapped feature map.
    pub channels: usize,
}

/// β = sigmoid(conv1×1(relu(f))): D → 1 channel, with bias, stride 1.
#[derive(Module, Debug)]
pub struct AttentionHead<B: Backend> {
    pub conv: Conv2d<B>,
}

impl AttentionHeadConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> AttentionHead<B> {
        AttentionHead {
            conv: Conv2dConfig::new([self.channels, 1], [1, 1]).init(device),
        }
    }
}

impl<B: Backend> AttentionHead<B> {
    /// `[N, D, H, W]` → β `[N, 1, H, W]` in (0, 1).
    pub fn forward(&self, f: Tensor<B, 4>) -> Tensor<B, 4> {
        // A 1×1 convolution, unpadded, stride 1 (as configured above), with its bias.
        let options = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
        let logits = gemm_conv2d(relu(f), self.conv.weight.val(), options);
        sigmoid(match &self.conv.bias {
            Some(bias) => logits + bias.val().reshape([1, -1, 1, 1]),
            None => logits,
        })
    }
}

/// f ⊙ β with β `[N, 1, H, W]` broadcast over the channels of f `[N, D, H, W]`.
pub fn explanation<B: Backend>(f: Tensor<B, 4>, beta: Tensor<B, 4>) -> Tensor<B, 4> {
    f * beta
}

/// Mean over H×W: `[N, D, H, W]` → `[N, D]`.
pub fn global_avg_pool<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [n, d, h, w] = x.dims();
    x.reshape([n, d, h * w]).mean_dim(2).reshape([n, d])
}

#[derive(Config, Debug)]
pub struct ClusterClassifierConfig {
    /// Channels of the pooled explanation map.
    pub channels: usize,
    /// C, the number of k-means clusters.
    pub clusters: usize,
}

/// Linear(D_out, C) on pooled explanation maps.
#[derive(Module, Debug)]
pub struct ClusterClassifier<B: Backend> {
    pub fc: Linear<B>,
}

impl ClusterClassifierConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> ClusterClassifier<B> {
        ClusterClassifier {
            fc: LinearConfig::new(self.channels, self.clusters).init(device),
        }
    }
}

impl<B: Backend> ClusterClassifier<B> {
    /// `[N, D_out]` → logits `[N, C]`.
    pub fn forward(&self, pooled: Tensor<B, 2>) -> Tensor<B, 2> {
        gemm_linear(&self.fc, pooled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::module::Param;
    use burn::tensor::TensorData;

    type B = Flex;

    fn t<const D: usize>(v: &[f32], shape: [usize; D]) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
    }

    fn values<const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
        x.into_data().iter::<f32>().collect()
    }

    fn sig(x: f32) -> f32 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn beta_is_sigmoid_of_conv_of_relu() {
        // Weight (1, −1), bias 0.5; positions (2,3) (−1,1) (1,−4): relu → (2,3) (0,1) (1,0)
        // → conv −0.5, −0.5, 1.5 (without the relu the last would be 5.5).
        fn check(f: &[f32], expected: &[f32]) {
            let mut head = AttentionHeadConfig::new(2).init::<B>(&Default::default());
            head.conv.weight = Param::from_tensor(t(&[1.0, -1.0], [1, 2, 1, 1]));
            head.conv.bias = Some(Param::from_tensor(t(&[0.5], [1])));
            let got = values(head.forward(t(f, [1, 2, 1, 3])));
            assert!(
                got.iter().zip(expected).all(|(g, e)| (g - e).abs() < 1e-6),
                "{got:?}"
            );
        }
        check(
            &[2., -1., 1., 3., 1., -4.],
            &[sig(-0.5), sig(-0.5), sig(1.5)],
        );
        check(&[0., 0., 0., 0., 0., 0.], &[sig(0.5); 3]);
    }

    #[test]
    fn explanation_pool_and_classifier() {
        // f: 2 channels on 1×2; β (0.5, 1): f⊙β = ch0 (1, 4), ch1 (−1, 0) → pooled (2.5, −0.5).
        let f = t(&[2., 4., -2., 0.], [1, 2, 1, 2]);
        let beta = t(&[0.5, 1.0], [1, 1, 1, 2]);
        let pooled = global_avg_pool(explanation(f, beta));
        assert_eq!(values(pooled.clone()), vec![2.5, -0.5]);
        let mut cls = ClusterClassifierConfig::new(2, 3).init::<B>(&Default::default());
        // Burn's Linear weight is [d_in, d_out].
        cls.fc.weight = Param::from_tensor(t(&[1., 0., 2., 0., 1., 2.], [2, 3]));
        cls.fc.bias = Some(Param::from_tensor(t(&[0., 1., 0.], [3])));
        assert_eq!(values(cls.forward(pooled)), vec![2.5, 0.5, 4.0]);
    }
}
