//! Linear probe: one [`LinearHead`] on frozen, pooled backbone features, trained with
//! burn-train's Learner (its metrics, checkpointer and progress display).
//!
//! Recipe (SPEC 6): SGD momentum 0.9 (no dampening), weight decay 1e-4, lr 0.3 at batch 256
//! scaled linearly with the batch, cosine decay to 0 over all iterations, cross-entropy,
//! 100 epochs. Two ways to feed it:
//! - [`ProbeMode::Cached`]: features computed once with the eval transform; fast.
//! - [`ProbeMode::Augmented`]: every epoch a fresh RandomResizedCrop + flip of each training
//!   image goes through the frozen backbone (the paper's protocol); see [`crate::augmented`].
//!
//! The Learner's validation split is always the cached eval-transform features of the test
//! set. Final top-1/top-5 are recomputed exactly over the whole test set with the last head.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::lr_scheduler::LrScheduler;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::SgdConfig;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burn::train::metric::{
    AccuracyMetric, LearningRateMetric, LossMetric, MetricDefinition, MetricId, NumericEntry, TopKAccuracyMetric,
};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use burn::train::{
    ClassificationOutput, InferenceStep, Interrupter, Learner, LearnerSummary, SupervisedTraining, TrainOutput, TrainStep,
};
use serde::{Deserialize, Serialize};

use crate::head::LinearHead;
use sca_kernels::top_k;

/// How the probe sees the training images.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProbeMode {
    Cached,
    Augmented,
}

impl std::fmt::Display for ProbeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProbeMode::Cached => "cached",
            ProbeMode::Augmented => "augmented",
        })
    }
}

impl std::str::FromStr for ProbeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cached" => Ok(ProbeMode::Cached),
            "augmented" => Ok(ProbeMode::Augmented),
            _ => Err(format!("unknown probe mode '{s}' (expected cached or augmented)")),
        }
    }
}

/// Probe hyper-parameters; every field can be overridden from the command line.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    pub mode: ProbeMode,
    pub epochs: usize,
    pub batch_size: usize,
    /// Learning rate at batch 256; the run uses `lr · batch_size / 256`.
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Scale range of RandomResizedCrop in augmented mode.
    pub min_scale: f64,
    pub max_scale: f64,
    /// Seed of the head's initialisation, the shuffling and the augmentations.
    pub seed: u64,
    /// Loader threads (image decoding and augmentation).
    pub workers: usize,
    /// Standardise each feature dimension with the training set's mean and std before the
    /// head, then fold that affine map into the saved head (so it still acts on raw pooled
    /// features, and its rows are the CAM weights). Only the optimisation's conditioning
    /// changes; `false` trains on raw features, as SwAV's script does.
    pub standardize: bool,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            mode: ProbeMode::Cached,
            epochs: 100,
            batch_size: 256,
            lr: 0.3,
            momentum: 0.9,
            weight_decay: 1e-4,
            min_scale: 0.08,
            max_scale: 1.0,
            seed: 0,
            workers: 0,
            standardize: true,
        }
    }
}

impl ProbeConfig {
    /// The learning rate actually used (linear scaling with the batch).
    pub fn scaled_lr(&self) -> f64 {
        self.lr * self.batch_size as f64 / 256.0
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err("epochs and batch_size must be positive".into());
        }
        if self.lr.is_nan() || self.lr <= 0.0 || !(0.0..1.0).contains(&self.momentum) || self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return Err(format!(
                "need lr > 0, 0 <= momentum < 1, weight_decay >= 0 (got {}, {}, {})",
                self.lr, self.momentum, self.weight_decay
            ));
        }
        if self.min_scale.is_nan() || self.min_scale <= 0.0 || self.min_scale > self.max_scale || self.max_scale > 1.0 {
            return Err(format!("need 0 < min_scale <= max_scale <= 1 (got {}, {})", self.min_scale, self.max_scale));
        }
        Ok(())
    }
}

/// Pooled features on the host, row-major `[len, dim]`, with their labels.
#[derive(Clone, Debug)]
pub struct HostFeatures {
    pub data: Arc<Vec<f32>>,
    pub dim: usize,
    pub labels: Arc<Vec<usize>>,
}

impl HostFeatures {
    pub fn new(data: Vec<f32>, dim: usize, labels: Vec<usize>) -> Self {
        assert_eq!(data.len(), dim * labels.len(), "features must be [labels.len(), dim]");
        HostFeatures { data: Arc::new(data), dim, labels: Arc::new(labels) }
    }

    pub fn from_tensor<B: Backend>(t: Tensor<B, 2>, labels: Vec<usize>) -> Self {
        let dim = t.dims()[1];
        Self::new(t.into_data().convert::<f32>().to_vec().expect("f32 features"), dim, labels)
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Rows `rows` as a batch on `device`.
    pub fn batch<B: Backend>(&self, rows: &[usize], device: &B::Device) -> FeatureBatch<B> {
        let d = self.dim;
        let mut x = Vec::with_capacity(rows.len() * d);
        for &r in rows {
            x.extend_from_slice(&self.data[r * d..(r + 1) * d]);
        }
        let y: Vec<i64> = rows.iter().map(|&r| self.labels[r] as i64).collect();
        FeatureBatch {
            features: Tensor::from_data(TensorData::new(x, [rows.len(), d]), device),
            targets: Tensor::from_data(TensorData::new(y, [rows.len()]), device),
        }
    }
}

/// Per-dimension affine normalisation `(x − mean) / std` of pooled features.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Standardizer {
    /// Added to the variance, so constant (e.g. dead) dimensions stay finite.
    pub const EPS: f64 = 1e-6;

    /// The identity map.
    pub fn identity(dim: usize) -> Self {
        Standardizer { mean: vec![0.0; dim], std: vec![1.0; dim] }
    }

    /// From per-dimension sums of `x` and `x²` over `n` rows.
    pub fn from_sums(sum: &[f64], sum_sq: &[f64], n: usize) -> Self {
        let n = n.max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sum_sq.iter().zip(&mean).map(|(q, m)| ((q / n - m * m).max(0.0) + Self::EPS).sqrt() as f32).collect();
        Standardizer { mean: mean.into_iter().map(|m| m as f32).collect(), std }
    }

    /// Mean and (population) std of every column of `f`.
    pub fn fit(f: &HostFeatures) -> Self {
        let d = f.dim;
        let (mut s, mut q) = (vec![0.0f64; d], vec![0.0f64; d]);
        for row in f.data.chunks_exact(d) {
            for (j, &v) in row.iter().enumerate() {
                s[j] += v as f64;
                q[j] += v as f64 * v as f64;
            }
        }
        Self::from_sums(&s, &q, f.len())
    }

    pub fn apply_host(&self, f: &HostFeatures) -> HostFeatures {
        let d = f.dim;
        let data = f.data.iter().enumerate().map(|(i, &v)| (v - self.mean[i % d]) / self.std[i % d]).collect();
        HostFeatures { data: Arc::new(data), dim: d, labels: f.labels.clone() }
    }

    pub fn apply<B: Backend>(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let device = x.device();
        let d = self.mean.len();
        let m = Tensor::<B, 1>::from_data(TensorData::new(self.mean.clone(), [d]), &device).unsqueeze::<2>();
        let s = Tensor::<B, 1>::from_data(TensorData::new(self.std.clone(), [d]), &device).unsqueeze::<2>();
        (x - m) / s
    }

    /// The head on raw features equivalent to `head` on standardised ones:
    /// `W' = W / std` (per column), `b' = b − W' · mean`.
    pub fn fold<B: Backend>(&self, head: LinearHead<B>) -> LinearHead<B> {
        let w = head.weight.val();
        let device = w.device();
        let d = self.mean.len();
        let s = Tensor::<B, 1>::from_data(TensorData::new(self.std.clone(), [d]), &device).unsqueeze::<2>();
        let m = Tensor::<B, 1>::from_data(TensorData::new(self.mean.clone(), [d]), &device).reshape([d, 1]);
        let w = w / s;
        let shift = w.clone().matmul(m).reshape([head.num_classes()]);
        LinearHead::from_tensors(w, head.bias.val() - shift)
    }
}

/// One probe step's input.
#[derive(Clone, Debug)]
pub struct FeatureBatch<B: Backend> {
    pub features: Tensor<B, 2>,
    pub targets: Tensor<B, 1, Int>,
}

impl<B: Backend> LinearHead<B> {
    fn classify(&self, batch: FeatureBatch<B>) -> ClassificationOutput<B> {
        let logits = self.forward(batch.features);
        let loss = CrossEntropyLossConfig::new().init(&logits.device()).forward(logits.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, logits, batch.targets)
    }
}

impl<B: AutodiffBackend> TrainStep for LinearHead<B> {
    type Input = FeatureBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: FeatureBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        let out = self.classify(batch);
        TrainOutput::new(self, out.loss.backward(), out)
    }
}

impl<B: Backend> InferenceStep for LinearHead<B> {
    type Input = FeatureBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: FeatureBatch<B>) -> ClassificationOutput<B> {
        self.classify(batch)
    }
}

/// A reproducible permutation of `0..n` for `(seed, epoch)` (Fisher-Yates on splitmix64).
pub fn permutation(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut state = seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x0050_524f_4245;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// Burn `DataLoader` over [`HostFeatures`]: batches in a new shuffled order every epoch
/// (or in index order without a seed).
pub struct FeatureLoader<B: Backend> {
    features: HostFeatures,
    rows: Arc<Vec<usize>>,
    batch_size: usize,
    shuffle: Option<u64>,
    epoch: Arc<AtomicUsize>,
    device: B::Device,
}

impl<B: Backend> FeatureLoader<B> {
    pub fn new(features: HostFeatures, batch_size: usize, shuffle: Option<u64>, device: B::Device) -> Self {
        let rows = Arc::new((0..features.len()).collect());
        FeatureLoader { features, rows, batch_size, shuffle, epoch: Arc::new(AtomicUsize::new(0)), device }
    }
}

struct FeatureIter<'a, B: Backend> {
    loader: &'a FeatureLoader<B>,
    order: Vec<usize>,
    pos: usize,
}

impl<B: Backend> Iterator for FeatureIter<'_, B> {
    type Item = FeatureBatch<B>;
    fn next(&mut self) -> Option<FeatureBatch<B>> {
        if self.pos >= self.order.len() {
            return None;
        }
        let end = (self.pos + self.loader.batch_size).min(self.order.len());
        let rows: Vec<usize> = self.order[self.pos..end].iter().map(|&i| self.loader.rows[i]).collect();
        self.pos = end;
        Some(self.loader.features.batch(&rows, &self.loader.device))
    }
}

impl<B: Backend> DataLoaderIterator<FeatureBatch<B>> for FeatureIter<'_, B> {
    fn progress(&self) -> Progress {
        Progress::new(self.pos, self.order.len())
    }
}

impl<B: Backend> DataLoader<B, FeatureBatch<B>> for FeatureLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<FeatureBatch<B>> + 'a> {
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed);
        let n = self.rows.len();
        let order = match self.shuffle {
            Some(seed) => permutation(n, seed, epoch),
            None => (0..n).collect(),
        };
        Box::new(FeatureIter { loader: self, order, pos: 0 })
    }

    fn num_items(&self) -> usize {
        self.rows.len()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, FeatureBatch<B>>> {
        Arc::new(FeatureLoader {
            features: self.features.clone(),
            rows: self.rows.clone(),
            batch_size: self.batch_size,
            shuffle: self.shuffle,
            epoch: self.epoch.clone(),
            device: device.clone(),
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, FeatureBatch<B>>> {
        Arc::new(FeatureLoader {
            features: self.features.clone(),
            rows: Arc::new(self.rows[start..end].to_vec()),
            batch_size: self.batch_size,
            shuffle: self.shuffle,
            epoch: self.epoch.clone(),
            device: self.device.clone(),
        })
    }
}

/// Cosine decay from `lr` at the first iteration to 0 after `total` iterations, one step per
/// iteration (Burn's own cosine scheduler refuses learning rates above 1, which linear
/// scaling produces for batches above ~850).
#[derive(Clone, Debug)]
pub struct CosineLr {
    pub lr: f64,
    pub total: usize,
    pub step: usize,
}

impl LrScheduler for CosineLr {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> f64 {
        let t = (self.step as f64 / self.total.max(1) as f64).min(1.0);
        self.step += 1;
        0.5 * self.lr * (1.0 + (std::f64::consts::PI * t).cos())
    }

    fn to_record<B: Backend>(&self) -> usize {
        self.step
    }

    fn load_record<B: Backend>(mut self, record: usize) -> Self {
        self.step = record;
        self
    }
}

/// One epoch of the probe's learning curve (means over the epoch's batches, weighted by size).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: Option<f64>,
    pub train_loss: Option<f64>,
    pub train_top1: Option<f64>,
    pub valid_loss: Option<f64>,
    pub valid_top1: Option<f64>,
    pub valid_top5: Option<f64>,
}

/// How training progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeDisplay {
    /// Burn's own renderer (its terminal UI when stdout is a terminal, else its plain printer).
    Burn,
    /// One line per epoch on stderr.
    Lines,
    /// Nothing.
    Quiet,
}

#[derive(Default)]
struct CurveState {
    names: HashMap<MetricId, String>,
    pending: Vec<(MetricId, f64, usize)>,
    /// (epoch, split, metric) → (Σ value·count, Σ count)
    sums: BTreeMap<(usize, bool, String), (f64, usize)>,
    last_epoch: usize,
}

impl CurveState {
    fn take_pending(&mut self, epoch: usize, valid: bool) {
        for (id, v, c) in std::mem::take(&mut self.pending) {
            let name = self.names.get(&id).cloned().unwrap_or_default();
            let e = self.sums.entry((epoch, valid, name)).or_insert((0.0, 0));
            e.0 += v * c as f64;
            e.1 += c;
        }
    }

    fn mean(&self, epoch: usize, valid: bool, prefix: &str) -> Option<f64> {
        self.sums
            .iter()
            .find(|((e, v, n), _)| *e == epoch && *v == valid && n.starts_with(prefix))
            .and_then(|(_, &(s, c))| (c > 0).then(|| s / c as f64))
    }

    fn record(&self, epoch: usize) -> EpochRecord {
        EpochRecord {
            epoch,
            lr: self.mean(epoch, false, "Learning Rate"),
            train_loss: self.mean(epoch, false, "Loss"),
            train_top1: self.mean(epoch, false, "Accuracy"),
            valid_loss: self.mean(epoch, true, "Loss"),
            valid_top1: self.mean(epoch, true, "Accuracy"),
            valid_top5: self.mean(epoch, true, "Top-K Accuracy"),
        }
    }

    fn epochs(&self) -> Vec<usize> {
        let mut e: Vec<usize> = self.sums.keys().map(|k| k.0).collect();
        e.dedup();
        e
    }
}

fn line(r: &EpochRecord, total: usize) -> String {
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    format!(
        "probe epoch {:>3}/{total}: lr {}  train loss {} top1 {}%  valid loss {} top1 {}% top5 {}%",
        r.epoch,
        f(r.lr, 4),
        f(r.train_loss, 4),
        f(r.train_top1, 2),
        f(r.valid_loss, 4),
        f(r.valid_top1, 2),
        f(r.valid_top5, 2)
    )
}

/// Wraps the display renderer and records the per-epoch means of every numeric metric.
struct Recorder {
    inner: Option<Box<dyn MetricsRenderer>>,
    state: Arc<Mutex<CurveState>>,
    lines: bool,
    epochs: usize,
}

impl Recorder {
    fn push(&self, s: &MetricState) {
        if let MetricState::Numeric(entry, value) = s {
            let (v, c) = match value {
                NumericEntry::Value(v) => (*v, 1),
                NumericEntry::Aggregated { aggregated_value, count } => (*aggregated_value, *count),
            };
            self.state.lock().unwrap().pending.push((entry.metric_id.clone(), v, c));
        }
    }

    fn advance(&mut self, epoch: usize, valid: bool) {
        let mut st = self.state.lock().unwrap();
        if self.lines && epoch > st.last_epoch && st.last_epoch > 0 {
            eprintln!("{}", line(&st.record(st.last_epoch), self.epochs));
        }
        st.last_epoch = st.last_epoch.max(epoch);
        st.take_pending(epoch, valid);
    }
}

impl MetricsRendererTraining for Recorder {
    fn update_train(&mut self, state: MetricState) {
        self.push(&state);
        if let Some(r) = self.inner.as_mut() {
            r.update_train(state)
        }
    }

    fn update_valid(&mut self, state: MetricState) {
        self.push(&state);
        if let Some(r) = self.inner.as_mut() {
            r.update_valid(state)
        }
    }

    fn render_train(&mut self, item: TrainingProgress, progress: Vec<ProgressType>) {
        self.advance(item.global_progress.items_processed, false);
        if let Some(r) = self.inner.as_mut() {
            r.render_train(item, progress)
        }
    }

    fn render_valid(&mut self, item: TrainingProgress, progress: Vec<ProgressType>) {
        self.advance(item.global_progress.items_processed, true);
        if let Some(r) = self.inner.as_mut() {
            r.render_valid(item, progress)
        }
    }

    fn on_train_end(&mut self, summary: Option<LearnerSummary>) -> Result<(), Box<dyn std::error::Error>> {
        let st = self.state.lock().unwrap();
        if self.lines && st.last_epoch > 0 {
            eprintln!("{}", line(&st.record(st.last_epoch), self.epochs));
        }
        drop(st);
        match self.inner.as_mut() {
            Some(r) => r.on_train_end(summary),
            None => Ok(()),
        }
    }
}

impl MetricsRendererEvaluation for Recorder {
    fn update_test(&mut self, name: EvaluationName, state: MetricState) {
        if let Some(r) = self.inner.as_mut() {
            r.update_test(name, state)
        }
    }

    fn render_test(&mut self, item: EvaluationProgress, progress: Vec<ProgressType>) {
        if let Some(r) = self.inner.as_mut() {
            r.render_test(item, progress)
        }
    }
}

impl MetricsRenderer for Recorder {
    fn manual_close(&mut self) {
        if let Some(r) = self.inner.as_mut() {
            r.manual_close()
        }
    }

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.state.lock().unwrap().names.insert(definition.metric_id.clone(), definition.name.clone());
        if let Some(r) = self.inner.as_mut() {
            r.register_metric(definition)
        }
    }
}

/// What [`fit`] returns: the trained head (on the inner backend), exact final accuracies on
/// the validation features, and the learning curve.
pub struct ProbeOutcome<B: Backend> {
    pub head: LinearHead<B>,
    pub top1: f64,
    pub top5: f64,
    pub curve: Vec<EpochRecord>,
}

/// Top-1 / top-5 accuracy (percent) of `head` on `features`, in batches of `batch` rows.
/// With fewer than five classes, top-5 is 100%.
pub fn accuracy<B: Backend>(head: &LinearHead<B>, features: &HostFeatures, batch: usize, device: &B::Device) -> (f64, f64) {
    let (mut hit1, mut hit5) = (0usize, 0usize);
    let n = features.len();
    for s in (0..n).step_by(batch.max(1)) {
        let rows: Vec<usize> = (s..(s + batch).min(n)).collect();
        let b = features.batch::<B>(&rows, device);
        let logits = head.forward(b.features);
        let c = logits.dims()[1];
        let k = c.min(5);
        // Selected on the device (Burn's CubeCL backends would sort the logits on the host);
        // the k come back unordered, so top-1 is the largest of them (leftmost on ties).
        let (values, idx) = top_k(logits, k);
        let values: Vec<f32> = values.into_data().convert::<f32>().to_vec().expect("float values");
        let idx: Vec<i64> = idx.into_data().convert::<i64>().to_vec().expect("int indices");
        for (j, &r) in rows.iter().enumerate() {
            let y = features.labels[r] as i64;
            let (row_values, row_idx) = (&values[j * k..(j + 1) * k], &idx[j * k..(j + 1) * k]);
            let best = (1..k).fold(0, |b, i| if row_values[i] > row_values[b] { i } else { b });
            hit1 += usize::from(row_idx[best] == y);
            hit5 += usize::from(row_idx.contains(&y));
        }
    }
    let pct = |h: usize| if n == 0 { 0.0 } else { 100.0 * h as f64 / n as f64 };
    (pct(hit1), pct(hit5))
}

/// Trains `head` with the Learner on the batches of `train` (already standardised by
/// `standardizer`; validation on `valid`, raw), folds the standardisation into the head and
/// evaluates it on the raw `valid` features. `artifact_dir` receives the Learner's logs and checkpoints
/// (`checkpoint/`, `train/`, `valid/`, `experiment.log`).
#[allow(clippy::too_many_arguments)]
pub fn fit<B: AutodiffBackend>(
    head: LinearHead<B>,
    train: Arc<dyn DataLoader<B, FeatureBatch<B>>>,
    standardizer: &Standardizer,
    valid: &HostFeatures,
    iters_per_epoch: usize,
    cfg: &ProbeConfig,
    display: ProbeDisplay,
    artifact_dir: &Path,
    device: &B::Device,
    interrupter: Option<Interrupter>,
) -> ProbeOutcome<B::InnerBackend> {
    let classes = head.num_classes();
    let valid_loader: Arc<dyn DataLoader<B::InnerBackend, FeatureBatch<B::InnerBackend>>> =
        Arc::new(FeatureLoader::<B::InnerBackend>::new(standardizer.apply_host(valid), cfg.batch_size, None, device.clone()));
    let optim = SgdConfig::new()
        .with_momentum(Some(MomentumConfig { momentum: cfg.momentum, dampening: 0.0, nesterov: false }))
        .with_weight_decay((cfg.weight_decay > 0.0).then(|| WeightDecayConfig::new(cfg.weight_decay as f32)))
        .init::<B, LinearHead<B>>();
    let sched = CosineLr { lr: cfg.scaled_lr(), total: cfg.epochs * iters_per_epoch.max(1), step: 0 };
    let learner = Learner::new(head, optim, sched);

    let state = Arc::new(Mutex::new(CurveState::default()));
    let mut training = SupervisedTraining::new(artifact_dir, train, valid_loader)
        .metrics((LossMetric::new(), AccuracyMetric::new(), TopKAccuracyMetric::new(classes.min(5))))
        .metric_train_numeric(LearningRateMetric::new())
        .with_file_checkpointer(NamedMpkFileRecorder::<FullPrecisionSettings>::new())
        .num_epochs(cfg.epochs);
    if let Some(i) = interrupter {
        training = training.with_interrupter(i);
    }
    if display != ProbeDisplay::Burn {
        training = training.with_application_logger(None);
    }
    let inner: Option<Box<dyn MetricsRenderer>> = match display {
        ProbeDisplay::Burn => Some(default_renderer(&training)),
        ProbeDisplay::Lines | ProbeDisplay::Quiet => None,
    };
    let training = training.renderer(Recorder { inner, state: state.clone(), lines: display == ProbeDisplay::Lines, epochs: cfg.epochs });
    let result = training.launch(learner);
    drop(result.renderer);
    let head = standardizer.fold(result.model);
    let (top1, top5) = accuracy(&head, valid, cfg.batch_size, device);
    let st = state.lock().unwrap();
    let curve = st.epochs().into_iter().map(|e| st.record(e)).collect();
    ProbeOutcome { head, top1, top5, curve }
}

/// Burn's default choice: its terminal UI on a terminal, its plain printer otherwise.
fn default_renderer<LC: burn::train::LearningComponentsTypes>(t: &SupervisedTraining<LC>) -> Box<dyn MetricsRenderer> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        return Box::new(burn::train::renderer::tui::TuiMetricsRendererWrapper::new(t.interrupter(), None));
    }
    Box::new(burn::train::renderer::CliMetricsRenderer::new())
}

/// Cached mode end to end: trains a fresh head on `train` features, validates on `valid`.
pub fn train_cached<B: AutodiffBackend>(
    train: &HostFeatures,
    valid: &HostFeatures,
    num_classes: usize,
    cfg: &ProbeConfig,
    display: ProbeDisplay,
    artifact_dir: &Path,
    device: &B::Device,
) -> ProbeOutcome<B::InnerBackend> {
    let head = LinearHead::<B>::new(train.dim, num_classes, cfg.seed, device);
    let standardizer = if cfg.standardize { Standardizer::fit(train) } else { Standardizer::identity(train.dim) };
    let loader: Arc<dyn DataLoader<B, FeatureBatch<B>>> =
        Arc::new(FeatureLoader::<B>::new(standardizer.apply_host(train), cfg.batch_size, Some(cfg.seed), device.clone()));
    let iters = train.len().div_ceil(cfg.batch_size);
    fit(head, loader, &standardizer, valid, iters, cfg, display, artifact_dir, device, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    type B = Autodiff<Flex>;

    #[test]
    fn config_validation_and_scaling() {
        let check = |edit: fn(&mut ProbeConfig), ok: bool| {
            let mut c = ProbeConfig::default();
            edit(&mut c);
            assert_eq!(c.validate().is_ok(), ok, "{c:?}");
        };
        check(|_| {}, true);
        check(|c| c.epochs = 0, false);
        check(|c| c.batch_size = 0, false);
        check(|c| c.lr = 0.0, false);
        check(|c| c.lr = f64::NAN, false);
        check(|c| c.momentum = 1.0, false);
        check(|c| c.weight_decay = -1e-4, false);
        check(|c| c.min_scale = 0.5, true);
        check(|c| c.max_scale = 0.05, false);
        check(|c| c.max_scale = 1.5, false);
        let lr = |batch_size| ProbeConfig { batch_size, ..ProbeConfig::default() }.scaled_lr();
        assert_eq!((lr(256), lr(64), lr(1024)), (0.3, 0.075, 1.2));
    }

    #[test]
    fn cosine_schedule() {
        let check = |lr: f64, total: usize, expected: &[f64]| {
            let mut s = CosineLr { lr, total, step: 0 };
            for (i, &e) in expected.iter().enumerate() {
                let got = s.step();
                assert!((got - e).abs() < 1e-4, "step {i}: {got} vs {e}");
            }
        };
        check(1.0, 4, &[1.0, 0.8536, 0.5, 0.1464, 0.0, 0.0]);
        check(2.4, 2, &[2.4, 1.2, 0.0]);
    }

    #[test]
    fn permutations() {
        let check = |n: usize, seed: u64, epoch: usize| {
            let p = permutation(n, seed, epoch);
            let mut s = p.clone();
            s.sort_unstable();
            assert_eq!(s, (0..n).collect::<Vec<_>>());
            p
        };
        assert_eq!(check(100, 3, 0), check(100, 3, 0));
        assert_ne!(check(100, 3, 0), check(100, 3, 1));
        assert_ne!(check(100, 3, 0), check(100, 4, 0));
        assert_eq!(check(1, 0, 0), vec![0]);
    }

    #[test]
    fn loader_batches_every_row_once() {
        let f = HostFeatures::new((0..20).map(|v| v as f32).collect(), 2, (0..10).collect());
        let loader = FeatureLoader::<Flex>::new(f, 4, Some(1), Default::default());
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        for b in loader.iter() {
            let x: Vec<f32> = b.features.into_data().to_vec().unwrap();
            let y: Vec<i64> = b.targets.into_data().convert::<i64>().to_vec().unwrap();
            sizes.push(y.len());
            for (r, &l) in y.iter().enumerate() {
                // Row l holds (2l, 2l + 1): features stay with their label.
                assert_eq!((x[2 * r], x[2 * r + 1]), (2.0 * l as f32, 2.0 * l as f32 + 1.0));
                seen.push(l as usize);
            }
        }
        assert_eq!(sizes, vec![4, 4, 2]);
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn accuracy_of_known_head() {
        // Head: logits = (x0, x1, −x0); rows (1, 0) → class 0; (0, 1) → 1; (−1, 0) → 2.
        let d = Default::default();
        let head = LinearHead::<Flex>::from_tensors(
            Tensor::from_floats([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], &d),
            Tensor::zeros([3], &d),
        );
        let f = HostFeatures::new(vec![1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 1.0], 2, vec![0, 1, 2, 0]);
        assert_eq!(accuracy(&head, &f, 3, &d), (75.0, 100.0));
    }

    /// Three well-separated clusters in 4-D: any decent probe reaches 100%.
    fn clusters(n_per: usize, seed: u64) -> HostFeatures {
        let centres = [[3.0, 0.0, 1.0, 0.0], [0.0, 3.0, 0.0, 1.0], [-3.0, -3.0, 1.0, 1.0]];
        let mut data = Vec::new();
        let mut labels = Vec::new();
        let mut s = seed;
        let mut noise = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 1.0
        };
        for i in 0..3 * n_per {
            let c = i % 3;
            data.extend(centres[c].iter().map(|v| v + noise()));
            labels.push(c);
        }
        HostFeatures::new(data, 4, labels)
    }

    fn check_probe(scale: f32, standardize: bool, lr: f64) {
        let dir = tempfile::tempdir().unwrap();
        let scaled = |f: HostFeatures| HostFeatures::new(f.data.iter().map(|v| v * scale).collect(), f.dim, f.labels.to_vec());
        let (train, valid) = (scaled(clusters(40, 1)), scaled(clusters(10, 2)));
        let cfg = ProbeConfig { epochs: 8, batch_size: 16, lr, seed: 3, standardize, ..ProbeConfig::default() };
        let out = train_cached::<B>(&train, &valid, 3, &cfg, ProbeDisplay::Quiet, dir.path(), &Default::default());
        let case = format!("scale {scale}, standardize {standardize}");
        assert_eq!((out.top1, out.top5), (100.0, 100.0), "{case}");
        assert_eq!(out.curve.iter().map(|r| r.epoch).collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>(), "{case}");
        // The Learner's last validation (standardised features, unfolded head) agrees with
        // the folded head on raw features.
        let last = out.curve.last().unwrap();
        assert_eq!(last.valid_top1, Some(out.top1), "{case}");
        // lr · 16/256 at the first iteration, decaying by cosine.
        let lr0 = lr * 16.0 / 256.0;
        assert!((out.curve[0].lr.unwrap() - lr0).abs() < 0.02 * lr0, "{case}: {:?}", out.curve[0]);
        assert!(last.lr.unwrap() < 0.05 * lr0 && last.train_loss.unwrap() < out.curve[0].train_loss.unwrap(), "{case}");
        assert_eq!(out.head.weight.dims(), [3, 4]);
        assert!(dir.path().join("checkpoint").is_dir());
    }

    #[test]
    fn probe_separates_separable_features() {
        check_probe(1.0, false, 4.8);
        // Features 100× larger would make raw SGD at this lr diverge; standardised, they train.
        check_probe(100.0, true, 4.8);
    }

    #[test]
    fn standardizer_statistics_and_folding() {
        let f = HostFeatures::new(vec![1.0, 0.0, 3.0, 0.0], 2, vec![0, 1]);
        let s = Standardizer::fit(&f);
        assert_eq!(s.mean, vec![2.0, 0.0]);
        assert!((s.std[0] - 1.0).abs() < 1e-6 && (s.std[1] - 1e-3).abs() < 1e-9, "{s:?}");
        assert_eq!(s.apply_host(&f).data.iter().map(|v| v.round()).collect::<Vec<_>>(), vec![-1.0, 0.0, 1.0, 0.0]);
        // mean (1, 2), std (2, 4), W = (1, 1): x = (3, 6) → standardised (1, 1) → logit 2.
        // Folded: W' = (½, ¼), b' = −(½·1 + ¼·2) = −1, and ½·3 + ¼·6 − 1 = 2.
        let d = Default::default();
        let s = Standardizer { mean: vec![1.0, 2.0], std: vec![2.0, 4.0] };
        let head = LinearHead::<Flex>::from_tensors(Tensor::from_floats([[1.0, 1.0]], &d), Tensor::zeros([1], &d));
        let folded = s.fold(head);
        assert_eq!(folded.weight.val().into_data().to_vec::<f32>().unwrap(), vec![0.5, 0.25]);
        assert_eq!(folded.bias.val().into_data().to_vec::<f32>().unwrap(), vec![-1.0]);
        let y: Vec<f32> = folded.forward(Tensor::from_floats([[3.0, 6.0]], &d)).into_data().to_vec().unwrap();
        assert_eq!(y, vec![2.0]);
    }

    #[test]
    fn head_safetensors_round_trip() {
        let d = Default::default();
        let head = LinearHead::<Flex>::from_tensors(
            Tensor::from_floats([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], &d),
            Tensor::from_floats([0.5, -1.0], &d),
        );
        let back = LinearHead::<Flex>::from_safetensors(&head.to_safetensors(), &d).unwrap();
        let y: Vec<f32> = back.forward(Tensor::from_floats([[1.0, 2.0, 3.0]], &d)).into_data().to_vec().unwrap();
        assert_eq!(y, vec![1.5, 4.0]);
        assert!(LinearHead::<Flex>::from_safetensors(b"nonsense", &d).is_err());
    }
}
