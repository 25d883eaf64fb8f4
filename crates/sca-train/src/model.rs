//! The trained network: backbone + SSL engine head + (optionally) the add-on. Only the
//! backbone is kept after pretraining.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use sca_attention::{AddOn, AddOnConfig};
use sca_backbone::{ResNet, ResNetConfig};
use sca_data::ImageBatch;
use sca_engine::simsiam::{SimSiamHead, SimSiamHeadConfig};
use sca_engine::swav::{SwavHead, SwavHeadConfig};

use crate::config::{EngineConfig, TrainConfig};

// One per model, never moved in bulk: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Engine<B: Backend> {
    Swav(SwavHead<B>),
    SimSiam(SimSiamHead<B>),
}

#[derive(Module, Debug)]
pub struct SslModel<B: Backend> {
    pub backbone: ResNet<B>,
    pub engine: Engine<B>,
    pub addon: Option<AddOn<B>>,
}

impl<B: Backend> SslModel<B> {
    pub fn new(cfg: &TrainConfig, device: &B::Device) -> Self {
        // Process-wide, like the convolution plan: the kernels read it as they run.
        sca_kernels::layout::set_channels_last(cfg.model.channels_last);
        let backbone = ResNetConfig::new(cfg.model.arch)
            .with_small_stem(cfg.model.small_stem)
            .with_zero_init_residual(cfg.model.zero_init_residual)
            .with_conv_impl(cfg.model.conv)
            .with_precision(cfg.precision)
            .init(device);
        let in_dim = backbone.feature_dim();
        let engine = match &cfg.engine {
            EngineConfig::Swav { prototypes, hidden_dim, out_dim, .. } => Engine::Swav(
                SwavHeadConfig::new(in_dim)
                    .with_hidden_dim(*hidden_dim)
                    .with_out_dim(*out_dim)
                    .with_n_prototypes(*prototypes)
                    .init(device),
            ),
            EngineConfig::Simsiam { proj_dim, pred_dim } => Engine::SimSiam(
                SimSiamHeadConfig::new(in_dim)
                    .with_proj_hidden_dim(*proj_dim)
                    .with_out_dim(*proj_dim)
                    .with_pred_hidden_dim(*pred_dim)
                    .init(device),
            ),
        };
        let addon = cfg.addon.enabled.then(|| addon_config(cfg, backbone.stage_channels()).init(device));
        let model = Self { backbone, engine, addon };
        sca_backbone::materialize(&model);
        model
    }

    /// Embedding z used by the memory bank: the engine's projection of the pooled feature.
    pub fn embed(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let f = self.backbone.forward_features(x);
        match &self.engine {
            Engine::Swav(h) => h.forward(f).0,
            Engine::SimSiam(h) => h.project(f),
        }
    }
}

pub fn addon_config(cfg: &TrainConfig, stage_channels: [usize; 4]) -> AddOnConfig {
    let a = &cfg.addon;
    AddOnConfig::for_backbone(stage_channels, crate::addon::tap(a.tap), a.clusters)
        .with_tau_c(a.tau_c)
        .with_w1(a.weights[1])
        .with_w2(a.weights[2])
        .with_mask_norm(crate::addon::mask_norm(a.mask_norm))
}

/// An [`ImageBatch`] (NCHW, normalised) as a tensor on `device`.
pub fn to_tensor<B: Backend>(batch: ImageBatch, device: &B::Device) -> Tensor<B, 4> {
    sca_kernels::upload(batch.data, batch.shape, device)
}
