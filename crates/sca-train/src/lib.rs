//! Pretraining: the run configuration, the model (backbone + SSL engine + add-on), the
//! training loop with epoch-start clustering, and checkpoints for exact resume.
//!
//! - [`config`]: the JSON run configuration, overrides and validation.
//! - [`model`]: [`model::SslModel`], what is trained.
//! - [`trainer`]: [`trainer::Trainer`], the loop; I/O goes through [`trainer::Observer`].
//! - [`addon`]: memory bank + k-means at epoch start and the add-on's forward pass.
//! - [`checkpoint`]: the checksummed checkpoint container.
//! - [`dist`]: gradient averaging and weight broadcast between data-parallel replicas.
//! - [`loss_scale`]: dynamic loss scaling for f16 training.

pub mod addon;
pub mod checkpoint;
pub mod config;
pub mod dist;
pub mod loss_scale;
pub mod model;
pub mod parity;
pub mod trainer;

pub use config::TrainConfig;
pub use trainer::{Observer, PhaseReport, RunEnd, StepMetrics, TrainError, Trainer};
