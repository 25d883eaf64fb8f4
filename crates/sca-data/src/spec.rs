//! `DatasetSpec`: the serde form of "which dataset", as written in experiment configs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::augment::{AugmentConfig, EvalTransform, IMAGENET_MEAN, IMAGENET_STD};
use crate::fashion_mnist::{self, FashionMnist};
use crate::image_folder::{self, ImageFolder, ImageFolderOptions, Verify};
use crate::scenes::{self, Scenes, Split};
use crate::{DataError, Dataset};

fn d_image_size() -> usize {
    64
}
fn d_classes() -> usize {
    10
}
fn d_train() -> usize {
    5000
}
fn d_test() -> usize {
    1000
}
fn d_fmnist_root() -> PathBuf {
    PathBuf::from(fashion_mnist::DEFAULT_ROOT)
}

/// (train, test or val) as opened from a spec.
pub type Splits = (Arc<dyn Dataset>, Option<Arc<dyn Dataset>>);

/// A dataset and where to find it. JSON examples:
/// `{"kind":"builtin","image_size":64,"classes":10,"train":5000,"test":1000,"seed":0}`,
/// `{"kind":"fashion_mnist","root":"/usr/share/datasets/fashion-mnist"}`,
/// `{"kind":"image_folder","train":"/data/in50/train","val":"/data/in50/val"}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DatasetSpec {
    Builtin {
        #[serde(default = "d_image_size")]
        image_size: usize,
        #[serde(default = "d_classes")]
        classes: usize,
        #[serde(default = "d_train")]
        train: usize,
        #[serde(default = "d_test")]
        test: usize,
        #[serde(default)]
        seed: u64,
    },
    FashionMnist {
        #[serde(default = "d_fmnist_root")]
        root: PathBuf,
    },
    ImageFolder {
        train: PathBuf,
        #[serde(default)]
        val: Option<PathBuf>,
        /// A corrupt image is an error rather than a skipped file.
        #[serde(default)]
        strict: bool,
        #[serde(default)]
        verify: Verify,
    },
}

impl Default for DatasetSpec {
    fn default() -> Self {
        DatasetSpec::builtin()
    }
}

impl DatasetSpec {
    /// The built-in scenes with their defaults (64 px, 10 classes, 5,000 / 1,000, seed 0).
    pub fn builtin() -> DatasetSpec {
        DatasetSpec::Builtin { image_size: d_image_size(), classes: d_classes(), train: d_train(), test: d_test(), seed: 0 }
    }

    pub fn fashion_mnist(root: impl Into<PathBuf>) -> DatasetSpec {
        DatasetSpec::FashionMnist { root: root.into() }
    }

    pub fn image_folder(train: impl Into<PathBuf>, val: Option<PathBuf>) -> DatasetSpec {
        DatasetSpec::ImageFolder { train: train.into(), val, strict: false, verify: Verify::default() }
    }

    /// Open (train, test or val).
    pub fn open(&self) -> Result<Splits, DataError> {
        self.open_with_progress(None)
    }

    /// As `open`, calling `progress` once per file verified (ImageFolder only).
    pub fn open_with_progress(&self, progress: Option<image_folder::Progress>) -> Result<Splits, DataError> {
        match self {
            DatasetSpec::Builtin { image_size, classes, train, test, seed } => {
                let tr = Scenes::new(*image_size, *classes, *train, *seed, Split::Train)?;
                let te = Scenes::new(*image_size, *classes, *test, *seed, Split::Test)?;
                Ok((Arc::new(tr), Some(Arc::new(te))))
            }
            DatasetSpec::FashionMnist { root } => {
                let (tr, te) = FashionMnist::open(root)?;
                Ok((Arc::new(tr), Some(Arc::new(te))))
            }
            DatasetSpec::ImageFolder { train, val, strict, verify } => {
                let opts = ImageFolderOptions { strict: *strict, verify: *verify, progress };
                let (tr, va) = ImageFolder::open_pair(train, val.as_deref(), &opts)?;
                Ok((Arc::new(tr), va.map(|v| Arc::new(v) as Arc<dyn Dataset>)))
            }
        }
    }

    /// Per-channel normalisation statistics of the dataset: (mean, std).
    pub fn mean_std(&self) -> ([f32; 3], [f32; 3]) {
        match self {
            DatasetSpec::Builtin { .. } => (scenes::MEAN, scenes::STD),
            DatasetSpec::FashionMnist { .. } => (fashion_mnist::MEAN, fashion_mnist::STD),
            DatasetSpec::ImageFolder { .. } => (IMAGENET_MEAN, IMAGENET_STD),
        }
    }

    /// Side of the (square) stored images where all have one size.
    pub fn image_size(&self) -> Option<usize> {
        match self {
            DatasetSpec::Builtin { image_size, .. } => Some(*image_size),
            DatasetSpec::FashionMnist { .. } => Some(28),
            DatasetSpec::ImageFolder { .. } => None,
        }
    }

    /// The usual augmentation for this dataset: SwAV multi-crop at the native size
    /// (2×224 + 6×96 for image folders) with the dataset's statistics.
    pub fn default_augment(&self) -> AugmentConfig {
        let (mean, std) = self.mean_std();
        match self.image_size() {
            Some(s) => AugmentConfig::swav_scaled(s, mean, std),
            None => AugmentConfig { mean, std, ..AugmentConfig::default() },
        }
    }

    /// The usual evaluation transform: identity at the native size, else Resize 256 + CenterCrop 224.
    pub fn default_eval(&self) -> EvalTransform {
        let (mean, std) = self.mean_std();
        match self.image_size() {
            Some(s) => EvalTransform::identity(s, mean, std),
            None => EvalTransform { mean, std, ..EvalTransform::imagenet() },
        }
    }
}

/// Class names of a dataset without opening it in full (an image folder's are its sorted
/// sub-folder names).
pub fn class_names(spec: &DatasetSpec) -> Result<Vec<String>, DataError> {
    match spec {
        DatasetSpec::Builtin { classes, .. } => Ok(scenes::class_names(*classes)),
        DatasetSpec::FashionMnist { .. } => Ok(fashion_mnist::CLASS_NAMES.iter().map(|s| s.to_string()).collect()),
        DatasetSpec::ImageFolder { train, .. } => Ok(image_folder::list_classes(Path::new(train))?.into_iter().map(|(n, _)| n).collect()),
    }
}
