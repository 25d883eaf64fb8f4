use burn::config::Config;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::conv::ConvImpl;
use crate::precision::Precision;
use crate::resnet::ResNet;

/// The supported depths. Names follow torchvision (`resnet50`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    ResNet18,
    ResNet34,
    ResNet50,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::ResNet18, Arch::ResNet34, Arch::ResNet50];

    pub fn name(self) -> &'static str {
        match self {
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
            Arch::ResNet50 => "resnet50",
        }
    }

    /// Blocks per stage, as in the ResNet paper.
    pub fn blocks(self) -> [usize; 4] {
        match self {
            Arch::ResNet18 => [2, 2, 2, 2],
            Arch::ResNet34 | Arch::ResNet50 => [3, 4, 6, 3],
        }
    }

    /// Bottleneck blocks (1×1, 3×3, 1×1 with expansion 4) instead of basic blocks.
    pub fn bottleneck(self) -> bool {
        matches!(self, Arch::ResNet50)
    }

    /// Output channels of the four stages.
    pub fn stage_channels(self) -> [usize; 4] {
        let e = if self.bottleneck() { 4 } else { 1 };
        [64 * e, 128 * e, 256 * e, 512 * e]
    }

    /// Width of the pooled feature (input of `fc`).
    pub fn feature_dim(self) -> usize {
        self.stage_channels()[3]
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s.to_ascii_lowercase())
            .ok_or_else(|| format!("unknown architecture '{s}' (expected resnet18, resnet34 or resnet50)"))
    }
}

/// Builds a [`ResNet`].
#[derive(Config, Debug)]
pub struct ResNetConfig {
    pub arch: Arch,
    /// CIFAR-style stem for 28-64 px inputs: 3×3 stride-1 conv and no max-pool.
    #[config(default = false)]
    pub small_stem: bool,
    /// Classes of the final `fc` layer; `None` builds the backbone without it.
    #[config(default = "None")]
    pub num_classes: Option<usize>,
    /// Start each residual branch's last BN at γ = 0 so every block begins as the identity
    /// (torchvision's `zero_init_residual`, used by SwAV).
    #[config(default = false)]
    pub zero_init_residual: bool,
    /// How the convolutions run (same parameters either way); see [`ConvImpl`].
    #[config(default = "ConvImpl::Auto")]
    pub conv_impl: ConvImpl,
    /// The arithmetic type of the convolutions (parameters stay f32); see [`Precision`].
    #[config(default = "Precision::F32")]
    pub precision: Precision,
}

impl ResNetConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResNet<B> {
        let model = ResNet::new(self, device);
        materialize(&model);
        model
    }
}

/// Draws every lazily initialised parameter of `module` now.
///
/// Burn initialises parameters on first use, and a clone taken before that draws its own,
/// different values. Materialising right after construction makes every clone (saving,
/// `valid()`, the training step) see the same weights.
pub fn materialize<B: Backend, M: burn::module::Module<B>>(module: &M) {
    struct Touch;
    impl<B: Backend> burn::module::ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::tensor::Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
}
