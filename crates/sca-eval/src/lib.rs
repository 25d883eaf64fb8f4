//! Evaluation of a pretrained backbone (SPEC 6): weighted KNN, linear probe, CAM Average
//! Drop / Average Increase, localisation against object boxes, and heatmap grids.
//!
//! The crate computes; it does not write files (the `sca` binary does), except that the
//! probe's Learner keeps its own logs and checkpoints in the directory it is given.
//!
//! Feature extraction and CAM need BatchNorm in inference mode: give them a backbone on a
//! plain (non-autodiff) backend, e.g. `model.valid()` of an autodiff model.

pub mod augmented;
pub mod cam;
pub mod features;
pub mod head;
pub mod heatmap;
pub mod knn;
pub mod plot;
pub mod probe;

pub use cam::{average_drop, average_increase, cam_batch, CamBatch, CamMetrics, CamRow};
pub use features::{extract_features, extract_pooled, knn_eval, knn_eval_across, KnnSettings};
pub use head::LinearHead;
pub use knn::{weighted_knn, KnnResult};
pub use probe::{EpochRecord, HostFeatures, ProbeConfig, ProbeDisplay, ProbeMode, ProbeOutcome, Standardizer};
