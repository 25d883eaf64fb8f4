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
    /// This replica's part of every batch (data-parallel training); not part of a config file.
    #[serde(skip)]
    pub shard: Shard,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig { batch_size: 256, workers: 0, prefetch: 2, seed: 0, shard: Shard::default() }
    }
}

/// Replica `rank` of `world` loads the `rank`-th contiguous share of every training batch
/// (`batch_size` is the global batch) and of the memory-bank pass. Samples keep their global
/// index, so every crop is the one a single replica would have made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { rank: 0, world: 1 }
    }
}

impl Shard {
    /// This replica's share of `0..n` (contiguous; shares differ by at most one).
    pub fn range(&self, n: usize) -> std::ops::Range<usize> {
        (self.rank * n / self.world)..((self.rank + 1) * n / self.world)
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
            Some(Err(_)) => self.remaining = 0,
            None => {
                self.remaining = 0;
                // The producer is gone: re-raise its panic (e.g. from a positive sampler)
                // here instead of ending the epoch early without a word.
                if let Some(h) = self.handle.take() {
                    if let Err(panic) = h.join() {
                        std::panic::resume_unwind(panic);
                    }
                }
            }
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
            let pool = match rayon::ThreadPoolBuilder::new()
                .num_threads(resolve_workers(workers))
                .thread_name(|i| format!("sca-data-worker-{i}"))
                .build()
            {
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

/// Allocate one buffer per entry of `sizes` holding `n` items of that many floats each, and
/// run `f(k, slices)` for every item `k` in parallel, where `slices` are item `k`'s parts of
/// the buffers. Workers write straight into the batch: no per-view allocation or copy.
fn fill_parallel<R, F>(n: usize, sizes: &[usize], f: F) -> Result<(Vec<Vec<f32>>, Vec<R>), DataError>
where
    R: Send,
    F: Fn(usize, &mut [&mut [f32]]) -> Result<R, DataError> + Sync + Send,
{
    let mut buffers: Vec<Vec<f32>> = sizes.iter().map(|&m| vec![0.0; n * m]).collect();
    let mut parts: Vec<Vec<&mut [f32]>> = (0..n).map(|_| Vec::with_capacity(sizes.len())).collect();
    for (buf, &m) in buffers.iter_mut().zip(sizes) {
        for (k, chunk) in buf.chunks_mut(m.max(1)).enumerate().take(n) {
            parts[k].push(chunk);
        }
    }
    let results = parts.into_par_iter().enumerate().map(|(k, mut slices)| f(k, &mut slices)).collect::<Result<Vec<R>, DataError>>()?;
    Ok((buffers, results))
}

fn batch(data: Vec<f32>, n: usize, size: usize) -> ImageBatch {
    ImageBatch { data, shape: [n, 3, size, size] }
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
    let mine = cfg.shard.range(bs);
    spawn_batches(start_batch.min(n_batches)..n_batches, cfg.workers, cfg.prefetch, move |b| {
        let idx = &order[b * bs..(b + 1) * bs][mine.clone()];
        let bs = idx.len();
        let sizes: Vec<usize> = views.iter().map(|c| 3 * c.size * c.size).collect();
        let (view_data, sources) = fill_parallel(bs, &sizes, |k, outs| {
            let i = idx[k];
            let (used, s) = load_or_substitute(&*ds, i)?;
            for (v, out) in outs.iter_mut().enumerate() {
                augment_view(&s.image, &views[v], &aug, rng::view_key(seed, epoch, i, v), out);
            }
            Ok((used, s.label))
        })?;

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
                let tasks: Vec<(usize, usize, usize)> =
                    idx.iter().zip(&chosen).flat_map(|(&i, c)| c.iter().enumerate().map(move |(j, &pi)| (i, j, pi))).collect();
                let (mut data, used) = fill_parallel(tasks.len(), &[3 * pos_crop.size * pos_crop.size], |k, outs| {
                    let (i, j, pi) = tasks[k];
                    let (used, s) = load_or_substitute(&*ds, pi)?;
                    augment_view(&s.image, &pos_crop, &aug, rng::positive_view_key(seed, epoch, i, j), outs[0]);
                    Ok(used)
                })?;
                (Some(batch(data.remove(0), tasks.len(), pos_crop.size)), used)
            }
        };

        let (indices, labels) = sources.into_iter().unzip();
        let crops = view_data.into_iter().zip(&views).map(|(d, c)| batch(d, bs, c.size)).collect();
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
        let (mut data, meta) = fill_parallel(idx.len(), &[3 * eval.crop * eval.crop], |k, outs| {
            let (used, s) = load_or_substitute(&*ds, idx[k])?;
            eval.apply(&s.image, outs[0]);
            let (w, h) = (s.image.width() as usize, s.image.height() as usize);
            Ok((used, s.label, s.bbox.and_then(|bb| eval.map_bbox(&bb, w, h))))
        })?;
        Ok(collect_eval(data.remove(0), meta, eval.crop))
    })
}

fn collect_eval(data: Vec<f32>, meta: Vec<(usize, usize, Option<BBox>)>, size: usize) -> EvalBatch {
    let n = meta.len();
    let mut indices = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    let mut bboxes = Vec::with_capacity(n);
    for (i, l, bb) in meta {
        indices.push(i);
        labels.push(l);
        bboxes.push(bb);
    }
    EvalBatch { images: batch(data, n, size), indices, labels, bboxes }
}

/// Memory-bank batches in index order (last partial batch kept): one augmented view per
/// image, of the first crop kind, keyed by (seed, epoch, index). A replica covers its
/// [`Shard::range`] of the dataset.
pub fn bank_batches(ds: Arc<dyn Dataset>, aug: &AugmentConfig, cfg: &LoaderConfig, epoch: usize) -> Batches<EvalBatch> {
    if let Err(e) = check_config(&*ds, aug, cfg.batch_size) {
        return error_batches(e);
    }
    let aug = aug.clone();
    let crop = CropSpec { count: 1, ..aug.crops[0].clone() };
    let (bs, seed) = (cfg.batch_size, cfg.seed);
    let mine = cfg.shard.range(ds.len());
    spawn_batches(0..num_eval_batches(mine.len(), bs), cfg.workers, cfg.prefetch, move |b| {
        let idx: Vec<usize> = (mine.start + b * bs..(mine.start + (b + 1) * bs).min(mine.end)).collect();
        let (mut data, meta) = fill_parallel(idx.len(), &[3 * crop.size * crop.size], |k, outs| {
            let i = idx[k];
            let (used, s) = load_or_substitute(&*ds, i)?;
            let p = augment_view(&s.image, &crop, &aug, rng::bank_view_key(seed, epoch, i), outs[0]);
            Ok((used, s.label, s.bbox.and_then(|bb| map_bbox(&bb, p.crop, crop.size, crop.size, p.flip))))
        })?;
        Ok(collect_eval(data.remove(0), meta, crop.size))
    })
}
