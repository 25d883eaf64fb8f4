//! The pretraining loop: epoch-start clustering (add-on), steps, the KNN monitor and
//! checkpoints. It does no I/O itself: files, progress and Ctrl-C belong to the caller's
//! [`Observer`].
//!
//! Determinism: every random choice (augmentation, shuffling, positives, k-means) is keyed
//! by (seed, epoch, index, ...), the backend RNG is used only for the initial weights, and a
//! checkpoint carries the model, both optimisers' momentum, the SwAV queue, the epoch's
//! pseudo-labels and the position. A resumed run therefore replays exactly what the
//! uninterrupted run would have done; on the CPU backend the weights are bit-identical.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsParams, Optimizer};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use serde_json::json;

use sca_backbone::resnet::global_avg_pool;
use sca_data::{Dataset, EvalTransform, ImageBatch, LoaderConfig, Shard, TrainBatch};
use sca_dist::{Replica, TrackedSum};
use sca_engine::swav::{SwavQueue, SwavQueueData};
use sca_optim::lars::{Lars, LarsConfig};
use sca_optim::schedule::warmup_cosine;

use crate::checkpoint::{CheckpointError, Container};
use crate::config::{EngineConfig, LrSchedule, TrainConfig};
use crate::loss_scale::{LossScale, Unscaler};
use crate::model::{to_tensor, Engine, SslModel};

type Optim<B> = OptimizerAdaptor<Lars<<B as AutodiffBackend>::InnerBackend>, SslModel<B>, B>;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("loss term '{term}' is {value} at epoch {epoch}, step {step}; stopping (the last checkpoint is kept)")]
    NonFinite { term: String, value: f64, epoch: usize, step: usize },
    #[error(transparent)]
    Data(#[from] sca_data::DataError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("checkpoint does not fit this run: {0}")]
    Incompatible(String),
    #[error("{0}")]
    Observer(String),
    #[error("{0}")]
    Other(String),
}

/// One logged step.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepMetrics {
    pub epoch: usize,
    pub step: usize,
    pub batch: usize,
    pub batches: usize,
    pub lr: f64,
    pub lr_addon: f64,
    pub loss: f64,
    pub loss_ssl: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_mu: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_cls: Option<f64>,
    pub images_per_s: f64,
    /// f16 only: the loss scale this step used, and whether its gradients overflowed (the
    /// step was then skipped and the scale halved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// What the loop needs from the outside world.
/// The notifications default to doing nothing; `step` and `checkpoint` have no default, so
/// an observer always says what it does with progress and with the checkpoints.
pub trait Observer {
    /// An epoch begins (`start_batch` > 0 when resuming inside it).
    fn epoch_start(&mut self, _epoch: usize, _batches: usize, _start_batch: usize) {}
    /// After every step (progress bars).
    fn step(&mut self, m: &StepMetrics);
    /// A line for `metrics.jsonl`.
    fn record(&mut self, _line: serde_json::Value) {}
    /// A human-readable note (cluster statistics, warnings).
    fn info(&mut self, _msg: &str) {}
    /// Persist a checkpoint; `keep_epoch` asks for an extra numbered copy.
    fn checkpoint(&mut self, bytes: Vec<u8>, keep_epoch: Option<usize>) -> Result<(), String>;
    /// Ctrl-C or similar: checkpoint and leave after the current step.
    fn stop_requested(&self) -> bool {
        false
    }
}

/// How a call to [`Trainer::run`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RunEnd {
    Finished,
    Interrupted { epoch: usize, batch: usize },
}

/// The KNN monitor, supplied by the caller so this crate does not depend on evaluation.
pub type KnnMonitor<B> =
    Box<dyn FnMut(&sca_backbone::ResNet<<B as AutodiffBackend>::InnerBackend>) -> Result<(f64, f64), String>>;

struct Losses<B: AutodiffBackend> {
    total: Tensor<B, 1>,
    ssl: Tensor<B, 1>,
    mu: Option<Tensor<B, 1>>,
    cls: Option<Tensor<B, 1>>,
    /// Embeddings of the assignment crops, for the SwAV queue.
    queue_z: Vec<Tensor<B, 2>>,
}

pub struct Trainer<B: AutodiffBackend> {
    pub cfg: TrainConfig,
    device: B::Device,
    pub model: SslModel<B>,
    optim_core: Optim<B>,
    optim_addon: Optim<B>,
    queue: Option<SwavQueue<B>>,
    /// Pseudo-labels of the current epoch (add-on only).
    pseudo: Option<Vec<u32>>,
    pub epoch: usize,
    /// Next batch inside `epoch`.
    pub batch: usize,
    /// Global optimiser step.
    pub step: usize,
    /// Whether every SwAV loss of this epoch so far sat within 1% of ln K.
    near_collapse: bool,
    train: Arc<dyn Dataset>,
    knn: Option<KnnMonitor<B>>,
    /// This replica of the data-parallel group ([`Replica::single`] alone).
    replica: Replica,
    /// Batch norm over the global batch (SyncBN) when there are several replicas.
    sync_bn: bool,
    /// Set by [`Trainer::restore`] when the checkpoint's SwAV queues were written by another
    /// number of replicas and the queues start empty instead.
    pub queue_reset: bool,
    /// Dynamic loss scale (f16 precision only).
    loss_scale: Option<LossScale>,
    /// Told the seconds of each phase of every step as it ends (see [`Trainer::time_phases`]).
    phase_report: Option<PhaseReport>,
}

/// Receives (phase, seconds) as each phase of a step ends.
pub type PhaseReport = Box<dyn FnMut(&str, f64)>;

fn optimiser<B: AutodiffBackend>(cfg: &TrainConfig) -> Optim<B> {
    let o = &cfg.optim;
    LarsConfig::new()
        .with_lars(o.lars)
        .with_momentum(o.momentum)
        .with_weight_decay(o.weight_decay)
        .with_exclude_bias_and_bn(o.exclude_bias_and_bn)
        .init::<B, SslModel<B>>()
}

impl<B: TrackedSum> Trainer<B> {
    /// A fresh run. `knn` is called after every `eval.knn_every` epochs.
    pub fn new(cfg: TrainConfig, train: Arc<dyn Dataset>, knn: Option<KnnMonitor<B>>, device: B::Device) -> Self {
        let model = SslModel::new(&cfg, &device);
        let loss_scale = cfg.precision.needs_loss_scaling().then(LossScale::default);
        let queue = match &cfg.engine {
            EngineConfig::Swav { queue_length, assignment_crops, out_dim, .. } if *queue_length > 0 => {
                Some(SwavQueue::new(assignment_crops.len(), *queue_length, *out_dim, &device))
            }
            _ => None,
        };
        Self {
            optim_core: optimiser::<B>(&cfg),
            optim_addon: optimiser::<B>(&cfg),
            cfg,
            device,
            model,
            queue,
            pseudo: None,
            epoch: 0,
            batch: 0,
            step: 0,
            near_collapse: true,
            train,
            knn,
            replica: Replica::single(),
            sync_bn: false,
            queue_reset: false,
            loss_scale,
            phase_report: None,
        }
    }

    /// Makes this trainer one replica of a data-parallel group: it loads its share of every
    /// global batch (`batch_size` stays the global batch), averages gradients with the other
    /// replicas every step, and starts from replica 0's weights. With `sync_bn`, batch norm
    /// normalises with the statistics of the global batch. Call before [`Trainer::restore`]
    /// and [`Trainer::run`], from the thread that will run this replica.
    pub fn distribute(&mut self, replica: Replica, sync_bn: bool) -> Result<(), TrainError> {
        crate::dist::check_batch_split(self.cfg.batch_size, replica.world())?;
        self.model = crate::dist::broadcast_from_root(&replica, self.model.clone());
        self.replica = replica;
        self.sync_bn = sync_bn;
        Ok(())
    }

    pub fn steps_per_epoch(&self) -> usize {
        sca_data::num_train_batches(self.train.len(), self.cfg.batch_size)
    }

    fn lr(&self, s: &LrSchedule) -> f64 {
        let lr = warmup_cosine(self.step, self.steps_per_epoch(), s.warmup_epochs, self.cfg.epochs, s.start, s.base, s.final_lr);
        self.cfg.scaled(lr)
    }

    fn loader_config(&self) -> LoaderConfig {
        LoaderConfig {
            batch_size: self.cfg.batch_size,
            workers: self.cfg.data.workers,
            prefetch: self.cfg.data.prefetch,
            seed: self.cfg.seed,
            shard: Shard { rank: self.replica.rank(), world: self.replica.world() },
        }
    }

    /// Runs from the current position to the last epoch, or until the observer asks to stop.
    pub fn run(&mut self, obs: &mut dyn Observer) -> Result<RunEnd, TrainError> {
        if self.step == 0 && self.cfg.eval.knn_every > 0 {
            // The randomly initialised network's score, the baseline every epoch is read against.
            if let Some(knn) = self.knn.as_mut() {
                let (top1, top5) = knn(&self.model.valid().backbone).map_err(TrainError::Other)?;
                obs.info(&format!("KNN at initialisation: top-1 {top1:.2}%, top-5 {top5:.2}%"));
                obs.record(json!({ "epoch": 0, "step": 0, "initial_knn_top1": top1, "initial_knn_top5": top5 }));
            }
        }
        while self.epoch < self.cfg.epochs {
            if self.cfg.addon.enabled && (self.pseudo.is_none() || self.batch == 0) {
                self.cluster(obs)?;
            }
            let batches = self.steps_per_epoch();
            obs.epoch_start(self.epoch, batches, self.batch);
            let started = Instant::now();
            let mut sums = [0f64; 4];
            let mut counted = 0usize;
            let positives = self.positive_fn();
            let aug = self.cfg.data.augment.clone();
            let iter = sca_data::train_batches(self.train.clone(), &aug, &self.loader_config(), self.epoch, self.batch, positives);
            for batch in iter {
                let t0 = Instant::now();
                let batch = batch?;
                let n_images = (batch.crops.len() * batch.indices.len() + batch.positive_indices.len()) * self.replica.world();
                let m = self.train_step(batch, batches, n_images, t0)?;
                sums[0] += m.loss;
                sums[1] += m.loss_ssl;
                sums[2] += m.loss_mu.unwrap_or(0.0);
                sums[3] += m.loss_cls.unwrap_or(0.0);
                counted += 1;
                obs.step(&m);
                if m.step % self.cfg.log_every == 0 || self.batch == batches {
                    obs.record(serde_json::to_value(&m).expect("plain struct"));
                }
                // Every replica must stop after the same step: a stop anywhere stops all.
                let stop = self.replica.max(if obs.stop_requested() { 1.0 } else { 0.0 }) > 0.0;
                if stop && self.batch < batches {
                    let bytes = self.checkpoint_bytes();
                    obs.checkpoint(bytes, None).map_err(TrainError::Observer)?;
                    return Ok(RunEnd::Interrupted { epoch: self.epoch, batch: self.batch });
                }
            }
            self.finish_epoch(obs, sums, counted, started)?;
        }
        Ok(RunEnd::Finished)
    }

    fn finish_epoch(&mut self, obs: &mut dyn Observer, sums: [f64; 4], counted: usize, started: Instant) -> Result<(), TrainError> {
        let epoch = self.epoch;
        let n = counted.max(1) as f64;
        let mut line = json!({
            "epoch": epoch, "step": self.step, "lr": self.lr(&self.cfg.optim.core),
            "loss": sums[0] / n, "loss_ssl": sums[1] / n, "epoch_seconds": started.elapsed().as_secs_f64(),
        });
        if self.cfg.addon.enabled {
            line["loss_mu"] = json!(sums[2] / n);
            line["loss_cls"] = json!(sums[3] / n);
        }
        if let EngineConfig::Swav { prototypes, .. } = &self.cfg.engine {
            if self.near_collapse && counted > 0 {
                obs.info(&format!(
                    "WARNING: the SwAV loss stayed within 1% of ln K = {:.4} for all of epoch {epoch}: the codes look collapsed (uniform). Check the learning rate, batch size and number of prototypes.",
                    (*prototypes as f64).ln()
                ));
                line["collapse_warning"] = json!(true);
            }
        }
        let every = self.cfg.eval.knn_every;
        if every > 0 && ((epoch + 1).is_multiple_of(every) || epoch + 1 == self.cfg.epochs) {
            if let Some(knn) = self.knn.as_mut() {
                let (top1, top5) = knn(&self.model.valid().backbone).map_err(TrainError::Other)?;
                line["knn_top1"] = json!(top1);
                line["knn_top5"] = json!(top5);
            }
        }
        obs.record(line);
        self.epoch += 1;
        self.batch = 0;
        self.pseudo = None;
        self.near_collapse = true;
        let keep = self.epoch.is_multiple_of(self.cfg.checkpoint_every).then_some(self.epoch);
        let bytes = self.checkpoint_bytes();
        obs.checkpoint(bytes, keep).map_err(TrainError::Observer)
    }

    /// One optimiser step on a given batch outside the epoch loop (benchmarks, tests).
    pub fn step_batch(&mut self, batch: TrainBatch) -> Result<StepMetrics, TrainError> {
        let n_images = batch.crops.len() * batch.indices.len() + batch.positive_indices.len();
        let batches = self.steps_per_epoch();
        self.train_step(batch, batches, n_images, Instant::now())
    }

    /// Times every step's upload of the images, forward pass, backward pass (with the
    /// gradient exchange) and optimiser update, waiting for the device after each, and hands
    /// each to `report` as it ends: a first step that takes minutes on a GPU then shows where.
    /// The forward and backward passes also report the host's own time to queue them
    /// (`forward_host`, `backward_host`, before the wait): near the phase's whole time, the
    /// host is what holds the device back. The waits cost a little throughput, so
    /// benchmarks time their steps without it. `None` stops it.
    pub fn time_phases(&mut self, report: Option<PhaseReport>) {
        self.phase_report = report;
    }

    /// The host's time since `since`, the device not waited on: how long queuing took.
    fn phase_note(&mut self, phase: &str, since: &Instant) {
        if let Some(report) = self.phase_report.as_mut() {
            report(phase, since.elapsed().as_secs_f64());
        }
    }

    /// The device finished everything queued; `phase` took the time since `since`.
    fn phase_done(&mut self, phase: &str, since: &mut Instant) {
        if let Some(report) = self.phase_report.as_mut() {
            let _ = B::sync(&self.device);
            report(phase, since.elapsed().as_secs_f64());
            *since = Instant::now();
        }
    }

    /// Pseudo-labels for the current epoch, e.g. to step the add-on without a clustering pass.
    pub fn set_pseudo_labels(&mut self, labels: Vec<u32>) {
        self.pseudo = Some(labels);
    }

    fn train_step(&mut self, batch: TrainBatch, batches: usize, n_images: usize, t0: Instant) -> Result<StepMetrics, TrainError> {
        let (lr, lr_addon) = (self.lr(&self.cfg.optim.core), self.lr(&self.cfg.optim.addon));
        let mut model = self.model.clone();
        if let Engine::Swav(head) = model.engine {
            model.engine = Engine::Swav(head.normalize_prototypes());
        }
        // SyncBN for this step's forward passes (the backward sums travel with the graph).
        let _sync_bn = (self.sync_bn && !self.replica.is_single()).then(|| {
            let replica = self.replica.clone();
            let sum: sca_dist::sync_bn::StatSum<B> = Rc::new(move |t| B::tracked_sum(&replica, t));
            sca_dist::sync_bn::install(self.replica.world(), sum)
        });
        let mut phase_start = Instant::now();
        // The images go to the device first, a phase of their own: from host memory, as the
        // loader hands them over.
        let mut batch = batch;
        let views: Vec<Tensor<B, 4>> = std::mem::take(&mut batch.crops).into_iter().map(|c| to_tensor(c, &self.device)).collect();
        let positives = batch.positives.take().map(|p| to_tensor(p, &self.device));
        self.phase_done("upload", &mut phase_start);
        let losses = self.forward(&model, views, positives, &batch);
        self.phase_note("forward_host", &phase_start);
        // The logged values are means over the global batch (replica means averaged), so a
        // non-finite value on any replica stops all of them at the same step.
        let scalar = |t: &Tensor<B, 1>| t.clone().into_scalar().elem::<f32>();
        let local = [Some(scalar(&losses.ssl)), losses.mu.as_ref().map(scalar), losses.cls.as_ref().map(scalar), Some(scalar(&losses.total))];
        let world = self.replica.world() as f64;
        let global = self.replica.sum_vec(local.iter().map(|v| v.unwrap_or(0.0)).collect());
        let mean = |i: usize| local[i].map(|_| global[i] as f64 / world);
        let values = [("ssl", mean(0)), ("attention_mse", mean(1)), ("cluster_ce", mean(2)), ("total", mean(3))];
        for (term, v) in values {
            if let Some(v) = v.filter(|v| !v.is_finite()) {
                return Err(TrainError::NonFinite { term: term.into(), value: v, epoch: self.epoch, step: self.step });
            }
        }
        self.phase_done("forward", &mut phase_start);
        let scale = self.loss_scale.as_ref().map(|s| s.scale);
        let mut grads = match scale {
            Some(s) => losses.total.mul_scalar(s).backward(),
            None => losses.total.backward(),
        };
        let addon_grads = match &model.addon {
            Some(a) => GradientsParams::from_module(&mut grads, a),
            None => GradientsParams::new(),
        };
        let mut core_grads = GradientsParams::from_grads(grads, &model);
        self.phase_note("backward_host", &phase_start);
        let mut addon_grads = match &model.addon {
            Some(a) => crate::dist::average_gradients(&self.replica, a, addon_grads),
            None => addon_grads,
        };
        core_grads = crate::dist::average_gradients(&self.replica, &model, core_grads);
        // Unscaled after averaging, so every replica sees the same sums and skips alike.
        let mut skipped = false;
        if let Some(ls) = self.loss_scale.as_mut() {
            let mut unscaler = Unscaler::new(ls.scale);
            core_grads = unscaler.unscale(&model, core_grads);
            if let Some(a) = &model.addon {
                addon_grads = unscaler.unscale(a, addon_grads);
            }
            skipped = !unscaler.all_finite();
            ls.update(!skipped);
        }
        if let (Engine::Swav(head), EngineConfig::Swav { freeze_prototypes_steps, .. }) = (&model.engine, &self.cfg.engine) {
            if self.step < *freeze_prototypes_steps {
                head.freeze_prototypes(&mut core_grads);
            }
            let ln_k = (head.n_prototypes() as f64).ln();
            self.near_collapse &= (values[0].1.unwrap() - ln_k).abs() <= 0.01 * ln_k;
        }
        self.phase_done("backward", &mut phase_start);
        if !skipped {
            model = self.optim_core.step(lr, model, core_grads);
            if model.addon.is_some() {
                model = self.optim_addon.step(lr_addon, model, addon_grads);
            }
            self.model = model;
        }
        // Reported on skipped steps too, so every step reports all its phases.
        self.phase_done("optimiser", &mut phase_start);
        if let Some(queue) = self.queue.as_mut() {
            if self.epoch >= queue_start(&self.cfg) {
                for (i, z) in losses.queue_z.into_iter().enumerate() {
                    queue.push(i, z);
                }
            }
        }
        self.step += 1;
        self.batch += 1;
        Ok(StepMetrics {
            epoch: self.epoch,
            step: self.step,
            batch: self.batch,
            batches,
            lr,
            lr_addon,
            loss: values[3].1.unwrap(),
            loss_ssl: values[0].1.unwrap(),
            loss_mu: values[1].1,
            loss_cls: values[2].1,
            images_per_s: n_images as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            loss_scale: scale,
            skipped,
        })
    }

    /// Forward pass and the three loss terms for one batch.
    fn forward(&self, model: &SslModel<B>, views: Vec<Tensor<B, 4>>, positives: Option<Tensor<B, 4>>, batch: &TrainBatch) -> Losses<B> {
        let b = batch.indices.len();
        // Views of one resolution go through the backbone together, as in SwAV.
        let mut pooled = Vec::with_capacity(views.len());
        let mut source_stages = None;
        let mut i = 0;
        while i < views.len() {
            let size = views[i].dims()[2];
            let j = (i..views.len()).find(|&j| views[j].dims()[2] != size).unwrap_or(views.len());
            let stages = model.backbone.forward_stages(Tensor::cat(views[i..j].to_vec(), 0));
            let feats = global_avg_pool(stages.c5.clone());
            if i == 0 && model.addon.is_some() {
                source_stages = Some(stages.to_array().map(|t| t.narrow(0, 0, b)));
            }
            pooled.extend(feats.chunk(j - i, 0));
            i = j;
        }
        let (ssl, queue_z) = self.ssl_loss(model, pooled);
        let w = self.cfg.addon.weights;
        let (Some(addon), Some(src)) = (model.addon.as_ref(), source_stages) else {
            return Losses { total: ssl.clone(), ssl, mu: None, cls: None, queue_z };
        };
        let pseudo = self.pseudo.as_ref().expect("clustering ran at epoch start");
        let positives = positives.expect("loader serves positives with the add-on");
        let pos_stages = model.backbone.forward_stages(positives).to_array();
        let labels = |idx: &[usize]| {
            let v: Vec<i64> = idx.iter().map(|&i| pseudo[i] as i64).collect();
            Tensor::<B, 1, Int>::from_data(TensorData::new(v, [idx.len()]), &self.device)
        };
        let out = crate::addon::forward(
            addon,
            &model.backbone,
            src,
            pos_stages,
            labels(&batch.indices),
            labels(&batch.positive_indices),
        );
        let total = ssl.clone().mul_scalar(w[0]) + out.loss_mu.clone().mul_scalar(w[1]) + out.loss_cls.clone().mul_scalar(w[2]);
        Losses { total, ssl, mu: Some(out.loss_mu), cls: Some(out.loss_cls), queue_z }
    }

    fn ssl_loss(&self, model: &SslModel<B>, pooled: Vec<Tensor<B, 2>>) -> (Tensor<B, 1>, Vec<Tensor<B, 2>>) {
        match (&model.engine, &self.cfg.engine) {
            (Engine::Swav(head), EngineConfig::Swav { epsilon, sinkhorn_iterations, temperature, assignment_crops, .. }) => {
                let views = pooled.len();
                let (z, scores) = head.forward(Tensor::cat(pooled, 0));
                let scores = scores.chunk(views, 0);
                let z = z.chunk(views, 0);
                let queue_scores = self
                    .queue
                    .as_ref()
                    .filter(|q| self.epoch >= queue_start(&self.cfg) && q.is_full())
                    .map(|q| q.scores(head.prototype_matrix()));
                let loss = sca_losses::swav::swav_loss(&scores, assignment_crops, *temperature, *epsilon, *sinkhorn_iterations, queue_scores.as_deref(), &self.replica);
                let queue_z = assignment_crops.iter().map(|&a| z[a].clone().detach()).collect();
                (loss, queue_z)
            }
            (Engine::SimSiam(head), EngineConfig::Simsiam { .. }) => {
                let mut it = pooled.into_iter();
                let (z1, p1) = head.forward(it.next().expect("two views"));
                let (z2, p2) = head.forward(it.next().expect("two views"));
                (sca_losses::simsiam::simsiam_loss(p1, p2, z1, z2), Vec::new())
            }
            _ => unreachable!("model and config built from the same engine choice"),
        }
    }

    fn positive_fn(&self) -> Option<sca_data::PositiveFn> {
        let labels = self.pseudo.as_ref()?;
        let sampler = Arc::new(sca_cluster::positives::PositiveSampler::new(labels));
        let p = self.cfg.addon.positives;
        Some(Arc::new(move |index, key| sampler.sample(index, p, key)))
    }

    /// Epoch start: memory bank of z for every training image, k-means, pseudo-labels.
    fn cluster(&mut self, obs: &mut dyn Observer) -> Result<(), TrainError> {
        let started = Instant::now();
        let model = self.model.valid();
        let (labels, stats) = crate::addon::cluster_epoch(&model, &self.train, &self.cfg, self.epoch, &self.loader_config(), &self.replica, &self.device)?;
        let line = json!({
            "epoch": self.epoch, "clustering": stats, "cluster_seconds": started.elapsed().as_secs_f64(),
        });
        obs.info(&format!("epoch {} clusters: {}", self.epoch, crate::addon::describe(&stats)));
        obs.record(line);
        self.pseudo = Some(labels);
        Ok(())
    }

    /// Everything needed to continue exactly where the run stands.
    pub fn checkpoint_bytes(&self) -> Vec<u8> {
        let rec = BinBytesRecorder::<FullPrecisionSettings>::default();
        let model = Recorder::<B>::record(&rec, self.model.clone().into_record(), ()).expect("in-memory record");
        let core = Recorder::<B>::record(&rec, self.optim_core.to_record(), ()).expect("in-memory record");
        let addon = Recorder::<B>::record(&rec, self.optim_addon.to_record(), ()).expect("in-memory record");
        let mut blobs = vec![("model".to_string(), model), ("optim_core".into(), core), ("optim_addon".into(), addon)];
        if let Some(q) = &self.queue {
            // The queue is per replica (as in SwAV): the checkpoint keeps every replica's.
            for (rank, data) in self.gather_queues(q.to_data()).into_iter().enumerate() {
                let name = if self.replica.is_single() { "queue".to_string() } else { format!("queue.{rank}") };
                blobs.push((name, serde_json::to_vec(&data).expect("plain data")));
            }
        }
        if let Some(p) = &self.pseudo {
            blobs.push(("pseudo_labels".into(), p.iter().flat_map(|v| v.to_le_bytes()).collect()));
        }
        let mut meta = json!({
            "format": 1, "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "near_collapse": self.near_collapse, "config": self.cfg, "replicas": self.replica.world(),
        });
        if let Some(ls) = &self.loss_scale {
            meta["loss_scale"] = json!(ls.scale);
            meta["loss_scale_good_steps"] = json!(ls.good_steps);
        }
        Container { meta, blobs }.encode()
    }

    /// Continues from checkpoint bytes written by [`Trainer::checkpoint_bytes`].
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), TrainError> {
        let c = Container::decode(bytes)?;
        let get = |k: &str| c.meta.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
        let (Some(epoch), Some(batch), Some(step)) = (get("epoch"), get("batch"), get("step")) else {
            return Err(TrainError::Incompatible("metadata lacks epoch/batch/step".into()));
        };
        let rec = BinBytesRecorder::<FullPrecisionSettings>::default();
        let model_rec = Recorder::<B>::load(&rec, c.blob("model")?.to_vec(), &self.device)
            .map_err(|e| TrainError::Incompatible(format!("model: {e}")))?;
        self.model = self.model.clone().load_record(model_rec);
        let core = Recorder::<B>::load(&rec, c.blob("optim_core")?.to_vec(), &self.device)
            .map_err(|e| TrainError::Incompatible(format!("optimiser: {e}")))?;
        self.optim_core = self.optim_core.clone().load_record(core);
        let addon = Recorder::<B>::load(&rec, c.blob("optim_addon")?.to_vec(), &self.device)
            .map_err(|e| TrainError::Incompatible(format!("add-on optimiser: {e}")))?;
        self.optim_addon = self.optim_addon.clone().load_record(addon);
        let replicas = c.meta.get("replicas").and_then(|v| v.as_u64()).unwrap_or(1) as usize;
        // Queues belong to replicas: with another replica count they start empty again
        // (and refill within queue_length / batch steps); the caller is told.
        self.queue_reset = self.queue.is_some() && replicas != self.replica.world();
        if self.queue.is_some() && !self.queue_reset {
            let name = if self.replica.is_single() { "queue".to_string() } else { format!("queue.{}", self.replica.rank()) };
            let data: SwavQueueData = serde_json::from_slice(c.blob(&name)?)
                .map_err(|e| TrainError::Incompatible(format!("queue: {e}")))?;
            self.queue = Some(SwavQueue::from_data(&data, &self.device));
        }
        self.pseudo = c
            .blob("pseudo_labels")
            .ok()
            .map(|b| b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect());
        self.near_collapse = c.meta.get("near_collapse").and_then(|v| v.as_bool()).unwrap_or(true);
        if let (Some(ls), Some(scale)) = (self.loss_scale.as_mut(), c.meta.get("loss_scale").and_then(|v| v.as_f64())) {
            *ls = LossScale { scale, good_steps: get("loss_scale_good_steps").unwrap_or(0) };
        }
        (self.epoch, self.batch, self.step) = (epoch, batch, step);
        Ok(())
    }

    /// Every replica's queue, in rank order (collective: all replicas call it together).
    fn gather_queues(&self, mine: SwavQueueData) -> Vec<SwavQueueData> {
        if self.replica.is_single() {
            return vec![mine];
        }
        let flat: Vec<f32> = mine.filled.iter().map(|&f| f as f32).chain(mine.values.iter().flatten().copied()).collect();
        let (world, len) = (self.replica.world(), flat.len());
        let rank = self.replica.rank();
        let all = self.replica.assemble(world * len, rank * len..(rank + 1) * len, &flat);
        let per_queue = mine.length * mine.dim;
        all.chunks(len)
            .map(|c| {
                let (filled, values) = c.split_at(mine.filled.len());
                SwavQueueData {
                    filled: filled.iter().map(|&f| f as usize).collect(),
                    values: values.chunks(per_queue).map(|v| v.to_vec()).collect(),
                    ..mine.clone()
                }
            })
            .collect()
    }

    /// The backbone alone, torchvision-named: what pretraining hands to evaluation.
    pub fn backbone_safetensors(&self) -> Vec<u8> {
        self.model.valid().backbone.to_safetensors()
    }

    /// The backbone's pooled features of `images` (inference mode), row-major `[N, D]`.
    pub fn pooled_features(&self, images: ImageBatch) -> Vec<f32> {
        let f = self.model.valid().backbone.forward_features(to_tensor(images, &self.device));
        f.into_data().convert::<f32>().to_vec::<f32>().expect("f32 features")
    }

    pub fn eval_transform(&self) -> EvalTransform {
        let a = &self.cfg.data.augment;
        EvalTransform::identity(self.cfg.data.image_size, a.mean, a.std)
    }
}

fn queue_start(cfg: &TrainConfig) -> usize {
    match &cfg.engine {
        EngineConfig::Swav { queue_start_epoch, .. } => *queue_start_epoch,
        _ => usize::MAX,
    }
}
