//! ResNet-18/34/50 backbones in torchvision's "v1.5" layout (stride on the 3×3 conv of the
//! bottleneck), with an optional small-image stem for 28-64 px inputs.
//!
//! - [`config`]: [`Arch`] and [`ResNetConfig`].
//! - [`resnet`]: the network; [`ResNet::forward_stages`] returns the four stage maps the
//!   attention add-on taps, [`ResNet::forward_features`] the pooled feature.
//! - [`conv`]: [`ConvImpl`] and [`conv_forward`], convolution as matmul (faster on CPU).
//! - [`precision`]: [`Precision`], convolutions in bf16/f16 with f32 master weights.
//! - [`norm`]: [`norm::batch_norm_forward`], Burn's training-mode batch norm without its
//!   transposes (the largest cost of a CPU training step before).
//! - [`weights`]: safetensors whose keys and shapes are exactly torchvision's `state_dict`,
//!   so weights move both ways between this crate and PyTorch.

pub mod config;
pub mod conv;
pub mod norm;
pub mod precision;
pub mod resnet;
pub mod weights;

pub use config::{materialize, Arch, ResNetConfig};
pub use conv::{conv_forward, conv_forward_in, ConvImpl};
pub use precision::Precision;
pub use resnet::{ConvLayer, ResNet, Stages};
pub use weights::{WeightsError, WeightsReport};
