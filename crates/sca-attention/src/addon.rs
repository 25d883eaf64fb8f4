//! The add-on module: β head + cluster classifier, and the two losses.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use sca_losses::{attention_mse, pseudo_label_ce};

use crate::correlation::{correlation_mask, MaskNorm};
use crate::head::{
    explanation, global_avg_pool, AttentionHead, AttentionHeadConfig, ClusterClassifier,
    ClusterClassifierConfig,
};
use crate::tap::{classifier_channels, tap_channels, Tap};

#[derive(Config, Debug)]
pub struct AddOnConfig {
    /// D, channels of the tapped map f.
    pub channels: usize,
    /// Channels reaching the classifier after the caller's remaining stages
    /// (layer4's for `Tap::Stage3`); `None`: `channels`.
    #[config(default = "None")]
    pub classifier_channels: Option<usize>,
    /// C, the number of k-means clusters.
    pub num_clusters: usize,
    #[config(default = "Tap::Last")]
    pub tap: Tap,
    /// τ_c of eq. 6.
    #[config(default = 0.05)]
    pub tau_c: f64,
    /// Weight of L_μ in the total loss.
    #[config(default = 0.05)]
    pub w1: f64,
    /// Weight of L_cls in the total loss.
    #[config(default = 0.1)]
    pub w2: f64,
    #[config(default = "MaskNorm::MinMax")]
    pub mask_norm: MaskNorm,
}

impl AddOnConfig {
    /// Channel counts from the backbone's four stage widths and the tap.
    pub fn for_backbone(stage_channels: [usize; 4], tap: Tap, num_clusters: usize) -> Self {
        Self::new(tap_channels(stage_channels, tap), num_clusters)
            .with_tap(tap)
            .with_classifier_channels(Some(classifier_channels(stage_channels, tap)))
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> AddOn<B> {
        let out = self.classifier_channels.unwrap_or(self.channels);
        AddOn {
            head: AttentionHeadConfig::new(self.channels).init(device),
            classifier: ClusterClassifierConfig::new(out, self.num_clusters).init(device),
            tap: self.tap,
            tau_c: self.tau_c,
            w1: self.w1,
            w2: self.w2,
            mask_norm: self.mask_norm,
        }
    }
}

/// β head and cluster classifier: the add-on's only parameters.
#[derive(Module, Debug)]
pub struct AddOn<B: Backend> {
    pub head: AttentionHead<B>,
    pub classifier: ClusterClassifier<B>,
    pub tap: Tap,
    pub tau_c: f64,
    pub w1: f64,
    pub w2: f64,
    pub mask_norm: MaskNorm,
}

/// Everything one add-on step produces; images ordered sources first, then positives
/// (source-major), N = B·(1+P).
#[derive(Debug, Clone)]
pub struct AddOnOutput<B: Backend> {
    /// L_μ = mean (β_source − μ)², `[1]`.
    pub loss_mu: Tensor<B, 1>,
    /// L_cls over all N images, `[1]`.
    pub loss_cls: Tensor<B, 1>,
    /// w1·L_μ + w2·L_cls, `[1]`.
    pub loss: Tensor<B, 1>,
    /// Correlation mask of the sources, detached, `[B, H, W]`.
    pub mu: Tensor<B, 3>,
    /// Attention masks of all images, `[N, 1, H, W]`.
    pub beta: Tensor<B, 4>,
    /// Classifier logits of all images, `[N, C]`.
    pub logits: Tensor<B, 2>,
}

impl<B: Backend> AddOn<B> {
    /// One add-on step. `source` `[B, D, H, W]` and `positives` `[B·P, D, H, W]`
    /// (source-major) are tapped maps on one grid; labels are the pseudo-labels of the
    /// sources `[B]` and of the positives `[B·P]`. `rest` maps f ⊙ β through the backbone
    /// stages after the tap (layer4 for `Tap::Stage3`, identity otherwise); it is called
    /// once on all N images.
    pub fn forward<F>(
        &self,
        source: Tensor<B, 4>,
        positives: Tensor<B, 4>,
        source_labels: Tensor<B, 1, Int>,
        positive_labels: Tensor<B, 1, Int>,
        rest: F,
    ) -> AddOnOutput<B>
    where
        F: Fn(Tensor<B, 4>) -> Tensor<B, 4>,
    {
        let [b, d, h, w] = source.dims();
        let [bp, ..] = positives.dims();
        assert!(
            b > 0 && bp % b == 0 && bp > 0,
            "{bp} positives for {b} sources"
        );
        assert_eq!(
            positives.dims()[1..],
            [d, h, w],
            "sources and positives on one grid"
        );
        let p = bp / b;
        let mu = correlation_mask(source.clone(), positives.clone(), p, self.mask_norm);
        let f = Tensor::cat(vec![source, positives], 0);
        let beta = self.head.forward(f.clone());
        let beta_source = beta.clone().slice(0..b).reshape([b, h, w]);
        let loss_mu = attention_mse(beta_source, mu.clone());
        let logits = self.logits(f, beta.clone(), rest);
        let labels = Tensor::cat(vec![source_labels, positive_labels], 0);
        let loss_cls = pseudo_label_ce(logits.clone(), labels, self.tau_c);
        let loss = loss_mu.clone().mul_scalar(self.w1) + loss_cls.clone().mul_scalar(self.w2);
        AddOnOutput {
            loss_mu,
            loss_cls,
            loss,
            mu,
            beta,
            logits,
        }
    }

    /// β for tapped maps `[N, D, H, W]` → `[N, 1, H, W]`.
    pub fn mask(&self, f: Tensor<B, 4>) -> Tensor<B, 4> {
        self.head.forward(f)
    }

    /// Classifier logits of f ⊙ β after `rest` and global average pooling.
    pub fn logits<F>(&self, f: Tensor<B, 4>, beta: Tensor<B, 4>, rest: F) -> Tensor<B, 2>
    where
        F: Fn(Tensor<B, 4>) -> Tensor<B, 4>,
    {
        self.classifier
            .forward(global_avg_pool(rest(explanation(f, beta))))
    }
}

/// Pseudo-labels as the `Int` tensor [`AddOn::forward`] takes.
pub fn labels_tensor<B: Backend>(labels: &[u32], device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    Tensor::from_data(TensorData::new(v, [labels.len()]), device)
}

#[cfg(test)]
mod tests;
