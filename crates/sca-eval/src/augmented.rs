//! The probe's augmented mode (the paper's protocol): every epoch each training image gets a
//! fresh RandomResizedCrop (scale `[min_scale, max_scale]`, ratio 3/4-4/3) + horizontal flip,
//! no colour distortion, goes through the frozen backbone in inference mode, and the pooled
//! feature feeds the head. The crops are keyed by (seed, epoch, index) in sca-data, so a run
//! is reproducible whatever the worker count.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use burn::train::Interrupter;
use sca_backbone::ResNet;
use sca_data::{num_train_batches, train_batches, AugmentConfig, Batches, CropSpec, DataError, Dataset, LoaderConfig, Subset, TrainBatch};

use crate::features::image_tensor;
use crate::head::LinearHead;
use crate::probe::{fit, ProbeDisplay, FeatureBatch, HostFeatures, ProbeConfig, ProbeOutcome, Standardizer};

/// RandomResizedCrop + flip only, at `size` pixels, with the dataset's statistics.
pub fn probe_augment(size: usize, min_scale: f32, max_scale: f32, mean: [f32; 3], std: [f32; 3]) -> AugmentConfig {
    AugmentConfig {
        crops: vec![CropSpec::new(1, size, min_scale, max_scale)],
        flip_p: 0.5,
        jitter_p: 0.0,
        grey_p: 0.0,
        blur_p: 0.0,
        mean,
        std,
        ..AugmentConfig::default()
    }
}

/// Burn `DataLoader` producing frozen-backbone features of augmented crops.
pub struct AugmentedLoader<B: AutodiffBackend> {
    ds: Arc<dyn Dataset>,
    aug: AugmentConfig,
    cfg: LoaderConfig,
    backbone: Arc<ResNet<B::InnerBackend>>,
    /// Applied to every feature batch (identity when standardisation is off).
    standardizer: Arc<Standardizer>,
    epoch: Arc<AtomicUsize>,
    device: B::Device,
    /// First loading error; the epoch ends there and training is interrupted.
    error: Arc<Mutex<Option<DataError>>>,
    interrupter: Interrupter,
}

impl<B: AutodiffBackend> AugmentedLoader<B> {
    pub fn new(
        ds: Arc<dyn Dataset>,
        aug: AugmentConfig,
        cfg: LoaderConfig,
        backbone: ResNet<B::InnerBackend>,
        device: B::Device,
        interrupter: Interrupter,
    ) -> Self {
        let dim = backbone.feature_dim();
        AugmentedLoader {
            ds,
            aug,
            cfg,
            backbone: Arc::new(backbone),
            standardizer: Arc::new(Standardizer::identity(dim)),
            epoch: Arc::new(AtomicUsize::new(0)),
            device,
            error: Arc::new(Mutex::new(None)),
            interrupter,
        }
    }

    fn with(&self, ds: Arc<dyn Dataset>, backbone: Arc<ResNet<B::InnerBackend>>, device: B::Device) -> Self {
        AugmentedLoader {
            ds,
            aug: self.aug.clone(),
            cfg: self.cfg.clone(),
            backbone,
            standardizer: self.standardizer.clone(),
            epoch: self.epoch.clone(),
            device,
            error: self.error.clone(),
            interrupter: self.interrupter.clone(),
        }
    }
}

struct AugIter<'a, B: AutodiffBackend> {
    loader: &'a AugmentedLoader<B>,
    batches: Batches<TrainBatch>,
    done: usize,
    total: usize,
}

impl<B: AutodiffBackend> Iterator for AugIter<'_, B> {
    type Item = FeatureBatch<B>;
    fn next(&mut self) -> Option<FeatureBatch<B>> {
        match self.batches.next()? {
            Ok(tb) => {
                let n = tb.labels.len();
                let images = tb.crops.into_iter().next().expect("one crop kind");
                let x = image_tensor::<B::InnerBackend>(images, &self.loader.device);
                let f = self.loader.standardizer.apply(self.loader.backbone.forward_features(x));
                let y: Vec<i64> = tb.labels.iter().map(|&l| l as i64).collect();
                self.done += n;
                Some(FeatureBatch {
                    features: Tensor::from_inner(f),
                    targets: Tensor::from_data(TensorData::new(y, [n]), &self.loader.device),
                })
            }
            Err(e) => {
                self.loader.interrupter.stop(Some(&format!("loading training images: {e}")));
                self.loader.error.lock().unwrap().get_or_insert(e);
                None
            }
        }
    }
}

impl<B: AutodiffBackend> DataLoaderIterator<FeatureBatch<B>> for AugIter<'_, B> {
    fn progress(&self) -> Progress {
        Progress::new(self.done, self.total)
    }
}

impl<B: AutodiffBackend> DataLoader<B, FeatureBatch<B>> for AugmentedLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<FeatureBatch<B>> + 'a> {
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed);
        let batches = train_batches(self.ds.clone(), &self.aug, &self.cfg, epoch, 0, None);
        let total = num_train_batches(self.ds.len(), self.cfg.batch_size) * self.cfg.batch_size;
        Box::new(AugIter { loader: self, batches, done: 0, total })
    }

    fn num_items(&self) -> usize {
        num_train_batches(self.ds.len(), self.cfg.batch_size) * self.cfg.batch_size
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, FeatureBatch<B>>> {
        let backbone = Arc::new((*self.backbone).clone().to_device(device));
        Arc::new(self.with(self.ds.clone(), backbone, device.clone()))
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, FeatureBatch<B>>> {
        let sub = Subset::from_indices(self.ds.clone(), (start..end.min(self.ds.len())).collect()).expect("indices in range");
        Arc::new(self.with(Arc::new(sub), self.backbone.clone(), self.device.clone()))
    }
}

/// Images used to estimate the standardisation statistics in augmented mode.
pub const STATS_IMAGES: usize = 10_000;

/// Mean and std of the augmented features, from up to [`STATS_IMAGES`] images of a
/// dedicated augmentation pass (its own epoch key, so no training epoch is reused).
fn feature_stats<B: AutodiffBackend>(loader: &AugmentedLoader<B>) -> Result<Standardizer, DataError> {
    const STATS_EPOCH: usize = 1 << 30;
    let d = loader.backbone.feature_dim();
    let (mut s, mut q, mut n) = (vec![0.0f64; d], vec![0.0f64; d], 0usize);
    for tb in train_batches(loader.ds.clone(), &loader.aug, &loader.cfg, STATS_EPOCH, 0, None) {
        let tb = tb?;
        let images = tb.crops.into_iter().next().expect("one crop kind");
        let f = loader.backbone.forward_features(image_tensor::<B::InnerBackend>(images, &loader.device));
        let rows = f.dims()[0];
        let v: Vec<f32> = f.into_data().convert::<f32>().to_vec().expect("f32 features");
        for row in v.chunks_exact(d) {
            for (j, &x) in row.iter().enumerate() {
                s[j] += x as f64;
                q[j] += x as f64 * x as f64;
            }
        }
        n += rows;
        if n >= STATS_IMAGES {
            break;
        }
    }
    Ok(Standardizer::from_sums(&s, &q, n))
}

/// Augmented mode end to end: a fresh head trained on augmented crops of `train_ds` through
/// the frozen `backbone` (inner backend), validated on the cached `valid` features.
#[allow(clippy::too_many_arguments)]
pub fn train_augmented<B: AutodiffBackend>(
    backbone: ResNet<B::InnerBackend>,
    train_ds: Arc<dyn Dataset>,
    image_size: usize,
    mean: [f32; 3],
    std: [f32; 3],
    valid: &HostFeatures,
    cfg: &ProbeConfig,
    display: ProbeDisplay,
    artifact_dir: &Path,
    device: &B::Device,
) -> Result<ProbeOutcome<B::InnerBackend>, DataError> {
    let classes = train_ds.num_classes();
    let head = LinearHead::<B>::new(backbone.feature_dim(), classes, cfg.seed, device);
    let aug = probe_augment(image_size, cfg.min_scale as f32, cfg.max_scale as f32, mean, std);
    let lcfg = LoaderConfig { batch_size: cfg.batch_size, workers: cfg.workers, prefetch: 2, seed: cfg.seed, ..Default::default() };
    let iters = num_train_batches(train_ds.len(), cfg.batch_size);
    if iters == 0 {
        return Err(DataError::Config(format!(
            "augmented probe: {} training images make no full batch of {}",
            train_ds.len(),
            cfg.batch_size
        )));
    }
    let interrupter = Interrupter::new();
    let mut loader = AugmentedLoader::<B>::new(train_ds, aug, lcfg, backbone, device.clone(), interrupter.clone());
    let standardizer = if cfg.standardize { feature_stats(&loader)? } else { Standardizer::identity(valid.dim) };
    loader.standardizer = Arc::new(standardizer.clone());
    let error = loader.error.clone();
    let outcome = fit(head, Arc::new(loader), &standardizer, valid, iters, cfg, display, artifact_dir, device, Some(interrupter));
    if let Some(e) = error.lock().unwrap().take() {
        return Err(e);
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use sca_backbone::{Arch, ResNetConfig};
    use sca_data::scenes::{Scenes, Split};

    type B = Autodiff<Flex>;

    fn run(backbone: &ResNet<Flex>, seed: u64) -> ProbeOutcome<Flex> {
        let device = Default::default();
        let backbone = backbone.clone();
        let train: Arc<dyn Dataset> = Arc::new(Scenes::new(16, 3, 20, 0, Split::Train).unwrap());
        let valid = HostFeatures::new(vec![0.5; 3 * 512], 512, vec![0, 1, 2]);
        let cfg = ProbeConfig { epochs: 2, batch_size: 8, seed, workers: 2, ..ProbeConfig::default() };
        let dir = tempfile::tempdir().unwrap();
        let (m, s) = (sca_data::scenes::MEAN, sca_data::scenes::STD);
        train_augmented::<B>(backbone, train, 16, m, s, &valid, &cfg, ProbeDisplay::Quiet, dir.path(), &device).unwrap()
    }

    #[test]
    fn augmented_probe_runs_and_is_reproducible() {
        // Burn initialises parameters lazily, and clones of a fresh model initialise
        // independently: materialise the weights once (a safetensors round trip) first.
        let fresh = ResNetConfig::new(Arch::ResNet18).with_small_stem(true).init::<Flex>(&Default::default());
        let bytes = fresh.to_safetensors();
        let backbone = fresh.load_safetensors(&bytes).unwrap().0;
        let (a, b, c) = (run(&backbone, 1), run(&backbone, 1), run(&backbone, 2));
        // 20 images in batches of 8: 2 full batches per epoch (the last partial one dropped).
        assert_eq!(a.curve.len(), 2);
        assert_eq!(a.head.weight.dims(), [3, 512]);
        let w = |o: &ProbeOutcome<Flex>| o.head.weight.val().into_data().to_vec::<f32>().unwrap();
        assert_eq!(w(&a), w(&b));
        assert_ne!(w(&a), w(&c));
    }

    #[test]
    fn probe_augmentation_is_crop_and_flip_only() {
        let a = probe_augment(32, 0.2, 0.9, [0.1; 3], [0.2; 3]);
        assert_eq!(a.crops, vec![CropSpec::new(1, 32, 0.2, 0.9)]);
        assert_eq!((a.flip_p, a.jitter_p, a.grey_p, a.blur_p), (0.5, 0.0, 0.0, 0.0));
        assert_eq!((a.mean, a.std), ([0.1; 3], [0.2; 3]));
    }
}
