//! The parallel loader: shuffled multi-crop training batches (with positives), index-ordered
//! evaluation batches, and index-ordered one-view batches for the memory bank.
//!
//! A producer thread builds batches in order on a private rayon pool of `workers` threads
//! (parallel over the samples of a batch) and hands them over through a channel holding at
//! most `prefetch` finished batches. Every random choice is keyed by (seed, epoch, index,
//! view) and the shuffle by (seed, epoch) only, so batches are identical for any number of
//! workers and a resumed epoch (`start_batch`) continues exactly where it stopped.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::{index::sample, SliceRandom};
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::augment::{augment_view, map_bbox, AugmentConfig, CropSpec, EvalTransform};
use crate::rng::{self, domain};
use crate::{BBox, DataError, Dataset, Sample};

/// Loader settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Worker threads; 0 = one per core.
    pub workers: usize,
    /// Finished batches that may wait for the consumer.
    pub prefetch: usize,
    pub seed: u64,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig { batch_size: 256, workers: 0, prefetch: 2, seed: 0 }
    }
}

/// Worker count with 0 meaning "one per core".
pub fn resolve_workers(workers: usize) -> usize {
    if workers > 0 {
        workers
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

/// Images as one NCHW f32 buffer, normalised.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageBatch {
    pub data: Vec<f32>,
    pub shape: [usize; 4],
}

impl ImageBatch {
    fn from_images(images: Vec<Vec<f32>>, size: usize) -> ImageBatch {
        let n = images.len();
        let mut data = Vec::with_capacity(n * 3 * size * size);
        for im in images {
            data.extend_from_slice(&im);
        }
        ImageBatch { data, shape: [n, 3, size, size] }
    }

    pub fn len(&self) -> usize {
        self.shape[0]
    }

    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }

    /// The CHW buffer of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.shape[1] * self.shape[2] * self.shape[3];
        &self.data[i * n..(i + 1) * n]
    }
}

/// One training step's input.
#[derive(Clone, Debug)]
pub struct TrainBatch {
    /// Dataset index of each source (a corrupt image's slot holds the image that replaced it).
    pub indices: Vec<usize>,
    /// True labels of the sources (for monitoring only).
    pub labels: Vec<usize>,
    /// One batch per view, in the order of the crop specs: `[B, 3, size, size]` each.
    pub crops: Vec<ImageBatch>,
    /// `[B·P, 3, s, s]`, source-major, one crop each of the first crop kind.
    pub positives: Option<ImageBatch>,
    /// Dataset indices of the positives, same order.
    pub positive_indices: Vec<usize>,
}

/// One evaluation (or memory-bank) batch.
#[derive(Clone, Debug)]
pub struct EvalBatch {
    pub images: ImageBatch,
    pub indices: Vec<usize>,
    pub labels: Vec<usize>,
    /// Object boxes in the output image's pixels, where the dataset has them.
    pub bboxes: Vec<Option<BBox>>,
}

/// Positive choice: (source index, random key) → dataset indices of its positives. Every
/// source must get the same number.
pub type PositiveFn = Arc<dyn Fn(usize, u64) -> Vec<usize> + Send + Sync>;

/// Positives drawn from the same label (a pseudo-label array, or true labels for previews):
/// `p` other members of the source's group, without replacement when the group has at
/// least `p` others, with replacement when it has fewer, the source itself when alone.
pub fn same_label_positives(labels: Arc<Vec<usize>>, p: usize) -> PositiveFn {
    let groups = {
        let n = labels.iter().copied().max().map_or(0, |m| m + 1);
        let mut g = vec![Vec::new(); n];
        for (i, &l) in labels.iter().enumerate() {
            g[l].push(i);
        }
        Arc::new(g)
    };
    Arc::new(move |index: usize, key: u64| {
        let members = &groups[labels[index]];
        let me = members.binary_search(&index).expect("source index is in its own group");
        let others = members.len() - 1;
        let mut rng = rng::rng_from_key(key);
        let pick = |k: usize| members[if k >= me { k + 1 } else { k }];
        if others == 0 {
            vec![index; p]
        } else if others >= p {
            sample(&mut rng, others, p).into_iter().map(pick).collect()
        } else {
            (0..p).map(|_| pick(rng.gen_range(0..others))).collect()
        }
    })
}

/// Batches per epoch when the last partial batch is dropped.
pub fn num_train_batches(len: usize, batch_size: usize) -> usize {
    len.checked_div(batch_size).unwrap_or(0)
}

/// Batches when the last partial batch is kept.
pub fn num_eval_batches(len: usize, batch_size: usize) -> usize {
    len.div_ceil(batch_size.max(1))
}

/// The sample order of an epoch: a permutation that depends on (seed, epoch) only.
pub fn epoch_order(len: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rng::rng_from_key(rng::key(&[domain::SHUFFLE, seed, epoch as u64])));
    order
}

/// Load `index`, or, when its image is corrupt and the dataset allows skipping, the next
/// loadable index after it (wrapping). Returns the index actually loaded.
pub fn load_or_substitute(ds: &dyn Dataset, index: usize) -> Result<(usize, Sample), DataError> {
    let n = ds.len();
    let mut i = index;
    loop {
        match ds.load(i) {
            Ok(s) => return Ok((i, s)),
            Err(e) if e.is_bad_image() && ds.skip_bad_images() => {
                i = (i + 1) % n;
                if i == index {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Ordered batches from a producer thread; dropping it stops the producer.
pub struct Batches<T> {
    rx: Option<Receiver<Result<T, DataError>>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
}

impl<T> Iterator for Batches<T> {
    type Item = Result<T, DataError>;
    fn next(&mut self) -> Option<Self::Item> {
        let item = self.rx.as_ref()?.recv().ok();
        match &item {
            Some(Ok(_)) => self.remaining = self.remaining.saturating_sub(1),
            _ => self.remaining = 0,
        }
        item
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}

impl<T> Drop for Batches<T> {
    fn drop(&mut self) {
        // Closing the channel makes the producer's next send fail, so it stops.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn spawn_batches<T, F>(batches: std::ops::Range<usize>, workers: usize, prefetch: usize, make: F) -> Batches<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Result<T, DataError> + Send + Sync + 'static,
{
    let (tx, rx) = sync_channel(prefetch);
    let remaining = batches.len();
    let handle = std::thread::Builder::new()
        .name("sca-data-loader".into())
        .spawn(move || {
            let pool = match rayon::ThreadPoolBuilder::new().num_threads(resolve_workers(workers)).thread_name(|i| format!("sca-data-worker-{i}")).build() {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(DataError::Config(format!("cannot start loader threads: {e}"))));
                    return;
                }
            };
            for b in batches {
                let r = pool.install(|| make(b));
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    return;
                }
            }
        })
        .expect("spawn the loader thread");
    Batches { rx: Some(rx), handle: Some(handle), remaining }
}

fn check_config(ds: &dyn Dataset, aug: &AugmentConfig, batch_size: usize) -> Result<(), DataError> {
    aug.validate()?;
    if batch_size == 0 {
        return Err(DataError::Config("batch_size must be at least 1".into()));
    }
    if ds.is_empty() {
        return Err(DataError::Config("the dataset is empty".into()));
    }
    Ok(())
}

fn error_batches<T: Send + 'static>(e: DataError) -> Batches<T> {
    let (tx, rx) = sync_channel(1);
    let _ = tx.send(Err(e));
    Batches { rx: Some(rx), handle: None, remaining: 1 }
}

fn one_view(image: &image::RgbImage, crop: &CropSpec, aug: &AugmentConfig, key: u64) -> Vec<f32> {
    let mut buf = vec![0.0; 3 * crop.size * crop.size];
    augment_view(image, crop, aug, key, &mut buf);
    buf
}

/// Shuffled multi-crop training batches of epoch `epoch`, from batch `start_batch` on
/// (last partial batch dropped). With `positives`, each source also gets the positives the
/// function names for it, one crop each of the first crop kind.
pub fn train_batches(
    ds: Arc<dyn Dataset>,
    aug: &AugmentConfig,
    cfg: &LoaderConfig,
    epoch: usize,
    start_batch: usize,
    positives: Option<PositiveFn>,
) -> Batches<TrainBatch> {
    if let Err(e) = check_config(&*ds, aug, cfg.batch_size) {
        return error_batches(e);
    }
    let aug = aug.clone();
    let (bs, seed) = (cfg.batch_size, cfg.seed);
    let n_batches = num_train_batches(ds.len(), bs);
    let order = epoch_order(ds.len(), seed, epoch);
    let views: Vec<CropSpec> = (0..aug.num_views()).map(|v| aug.crop_of_view(v).clone()).collect();
    let pos_crop = CropSpec { count: 1, ..aug.crops[0].clone() };
    spawn_batches(start_batch.min(n_batches)..n_batches, cfg.workers, cfg.prefetch, move |b| {
        let idx = &order[b * bs..(b + 1) * bs];
        let sources: Vec<(usize, usize, Vec<Vec<f32>>)> = idx
            .par_iter()
            .map(|&i| {
                let (used, s) = load_or_substitute(&*ds, i)?;
                let crops = views.iter().enumerate().map(|(v, c)| one_view(&s.image, c, &aug, rng::view_key(seed, epoch, i, v))).collect();
                Ok((used, s.label, crops))
            })
            .collect::<Result<_, DataError>>()?;

        let (positive_batch, positive_indices) = match &positives {
            None => (None, Vec::new()),
            Some(f) => {
                let chosen: Vec<Vec<usize>> = idx.iter().map(|&i| f(i, rng::positive_choice_key(seed, epoch, i))).collect();
                let p = chosen[0].len();
                for (&i, c) in idx.iter().zip(&chosen) {
                    if c.len() != p {
                        return Err(DataError::Positives { index: i, got: c.len(), expected: p });
                    }
                    if let Some(&bad) = c.iter().find(|&&j| j >= ds.len()) {
                        return Err(DataError::Index { index: bad, len: ds.len() });
                    }
                }
                let tasks: Vec<(usize, usize, usize)> = idx.iter().zip(&chosen).flat_map(|(&i, c)| c.iter().enumerate().map(move |(j, &pi)| (i, j, pi))).collect();
                let done: Vec<(usize, Vec<f32>)> = tasks
                    .par_iter()
                    .map(|&(i, j, pi)| {
                        let (used, s) = load_or_substitute(&*ds, pi)?;
                        Ok((used, one_view(&s.image, &pos_crop, &aug, rng::positive_view_key(seed, epoch, i, j))))
                    })
                    .collect::<Result<_, DataError>>()?;
                let (used, imgs): (Vec<usize>, Vec<Vec<f32>>) = done.into_iter().unzip();
                (Some(ImageBatch::from_images(imgs, pos_crop.size)), used)
            }
        };

        let mut indices = Vec::with_capacity(bs);
        let mut labels = Vec::with_capacity(bs);
        let mut per_view: Vec<Vec<Vec<f32>>> = views.iter().map(|_| Vec::with_capacity(bs)).collect();
        for (used, label, crops) in sources {
            indices.push(used);
            labels.push(label);
            for (v, c) in crops.into_iter().enumerate() {
                per_view[v].push(c);
            }
        }
        let crops = per_view.into_iter().zip(&views).map(|(imgs, c)| ImageBatch::from_images(imgs, c.size)).collect();
        Ok(TrainBatch { indices, labels, crops, positives: positive_batch, positive_indices })
    })
}

/// Evaluation batches in index order (last partial batch kept): resize + centre crop.
pub fn eval_batches(ds: Arc<dyn Dataset>, eval: &EvalTransform, batch_size: usize, workers: usize) -> Batches<EvalBatch> {
    if let Err(e) = eval.validate() {
        return error_batches(e);
    }
    if batch_size == 0 {
        return error_batches(DataError::Config("batch_size must be at least 1".into()));
    }
    let eval = eval.clone();
    let len = ds.len();
    spawn_batches(0..num_eval_batches(len, batch_size), workers, 2, move |b| {
        let idx: Vec<usize> = (b * batch_size..((b + 1) * batch_size).min(len)).collect();
        let done: Vec<(usize, usize, Vec<f32>, Option<BBox>)> = idx
            .par_iter()
            .map(|&i| {
                let (used, s) = load_or_substitute(&*ds, i)?;
                let mut buf = vec![0.0; 3 * eval.crop * eval.crop];
                eval.apply(&s.image, &mut buf);
                let (w, h) = (s.image.width() as usize, s.image.height() as usize);
                let bb = s.bbox.and_then(|bb| eval.map_bbox(&bb, w, h));
                Ok((used, s.label, buf, bb))
            })
            .collect::<Result<_, DataError>>()?;
        Ok(collect_eval(done, eval.crop))
    })
}

fn collect_eval(done: Vec<(usize, usize, Vec<f32>, Option<BBox>)>, size: usize) -> EvalBatch {
    let mut indices = Vec::new();
    let mut labels = Vec::new();
    let mut imgs = Vec::new();
    let mut bboxes = Vec::new();
    for (i, l, im, bb) in done {
        indices.push(i);
        labels.push(l);
        imgs.push(im);
        bboxes.push(bb);
    }
    EvalBatch { images: ImageBatch::from_images(imgs, size), indices, labels, bboxes }
}

/// Memory-bank batches in index order (last partial batch kept): one augmented view per
/// image, of the first crop kind, keyed by (seed, epoch, index).
pub fn bank_batches(ds: Arc<dyn Dataset>, aug: &AugmentConfig, cfg: &LoaderConfig, epoch: usize) -> Batches<EvalBatch> {
    if let Err(e) = check_config(&*ds, aug, cfg.batch_size) {
        return error_batches(e);
    }
    let aug = aug.clone();
    let crop = CropSpec { count: 1, ..aug.crops[0].clone() };
    let (bs, seed, len) = (cfg.batch_size, cfg.seed, ds.len());
    spawn_batches(0..num_eval_batches(len, bs), cfg.workers, cfg.prefetch, move |b| {
        let idx: Vec<usize> = (b * bs..((b + 1) * bs).min(len)).collect();
        let done = idx
            .par_iter()
            .map(|&i| {
                let (used, s) = load_or_substitute(&*ds, i)?;
                let mut buf = vec![0.0; 3 * crop.size * crop.size];
                let p = augment_view(&s.image, &crop, &aug, rng::bank_view_key(seed, epoch, i), &mut buf);
                let bb = s.bbox.and_then(|bb| map_bbox(&bb, p.crop, crop.size, crop.size, p.flip));
                Ok((used, s.label, buf, bb))
            })
            .collect::<Result<_, DataError>>()?;
        Ok(collect_eval(done, crop.size))
    })
}
