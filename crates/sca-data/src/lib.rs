//! Data for self-supervised pretraining and evaluation: datasets, augmentations and a
//! deterministic parallel loader. Produces plain NCHW `f32` buffers; knows nothing of Burn.
//!
//! Layout:
//! - [`dataset`]: the [`Dataset`] trait, [`Sample`], [`BBox`], [`Subset`].
//! - Sources: [`image_folder`] (torchvision `root/<class>/<image>`), [`fashion_mnist`] (IDX
//!   files), [`scenes`] (built-in cluttered scenes generated from a seed, with boxes).
//! - [`spec`]: [`DatasetSpec`], the serde form used in configs, with per-dataset statistics.
//! - [`transform`]: the individual image operations, parameters explicit.
//! - [`augment`]: [`AugmentConfig`] (SwAV multi-crop and colour distortion), random
//!   parameter draws, and [`EvalTransform`] (resize + centre crop).
//! - [`loader`]: training batches with multi-crop and positives, evaluation and
//!   memory-bank batches; results never depend on the worker count.
//! - [`subset_builder`]: the reproducible "ImageNet-50"-style class subset.
//! - [`preview`]: grids of augmented views for eyeballing.
//! - [`rng`]: the keyed random streams everything draws from.

pub mod augment;
pub mod dataset;
mod error;
pub mod fashion_mnist;
pub mod image_folder;
pub mod loader;
pub mod preview;
pub mod rng;
pub mod scenes;
pub mod spec;
pub mod subset_builder;
pub mod transform;

pub use augment::{AugmentConfig, CropSpec, EvalTransform, IMAGENET_MEAN, IMAGENET_STD};
pub use dataset::{class_counts, labels, scan, BBox, Dataset, Progress, Sample, SampleInfo, Subset};
pub use error::DataError;
pub use fashion_mnist::FashionMnist;
pub use image_folder::{ImageFolder, ImageFolderOptions, Verify};
pub use loader::{
    Shard,
    bank_batches, epoch_order, eval_batches, num_eval_batches, num_train_batches, same_label_positives, train_batches, Batches, EvalBatch,
    ImageBatch, LoaderConfig, PositiveFn, TrainBatch,
};
pub use preview::preview_grid;
pub use scenes::Scenes;
pub use spec::{class_names, DatasetSpec, Splits};
pub use transform::denormalise_to_rgb;
