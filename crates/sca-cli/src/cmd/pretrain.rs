//! `sca pretrain`: runs the pretraining loop into a run directory
//! (`config.json`, `metrics.jsonl`, `checkpoints/`, `backbone.safetensors`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use sca_train::trainer::KnnMonitor;
use sca_train::{Observer, RunEnd, StepMetrics, TrainConfig, Trainer};

use crate::device::{Choice, DeviceArg};
use sca_dist::{Replica, TrackedSum};
use crate::{files, run_dir, with_backend};

/// The built-in default: SwAV + add-on on the built-in cluttered scenes.
pub const DEFAULT_CONFIG: &str = include_str!("../../../../configs/default.json");

#[derive(clap::Args)]
pub struct Args {
    /// Experiment config (JSON); the built-in default (configs/default.json) when omitted.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run directory; `runs/<name>` when omitted.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceArg,
    /// Override a config key, e.g. `--set epochs=2 --set addon.enabled=false`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Continue the run in this directory from its latest intact checkpoint.
    #[arg(long, conflicts_with_all = ["config", "out"])]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub dist: DistArgs,
}

/// Data-parallel training: several devices in this process, and several processes (nodes).
#[derive(clap::Args, Clone, Debug)]
pub struct DistArgs {
    /// Devices of this process, one replica each, e.g. `cuda:0,cuda:1` or `cpu:0,cpu:1`
    /// (CPU replicas are threads sharing the cores). `batch_size` is the global batch.
    #[arg(long, value_delimiter = ',', conflicts_with = "device")]
    pub devices: Vec<String>,
    /// Processes taking part (one per node, each with the same --devices count).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// This process's index, 0..nodes; node 0 hosts the coordinator and writes the run.
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// HOST:PORT where node 0 runs the coordinator (required with --nodes > 1).
    #[arg(long)]
    pub coordinator: Option<String>,
    /// Address the other nodes reach this one at (default: the route to the coordinator).
    #[arg(long)]
    pub node_host: Option<String>,
    /// Port of this node's tensor service (default: coordinator port + 1 + node rank).
    #[arg(long)]
    pub data_port: Option<u16>,
    /// Normalise each replica's batch on its own instead of with the global batch statistics.
    #[arg(long)]
    pub no_sync_bn: bool,
}

impl DistArgs {
    /// (local device choices, group layout); one device and no group when nothing was asked.
    fn layout(&self, device: DeviceArg) -> anyhow::Result<(Vec<DeviceArg>, sca_dist::GroupSpec)> {
        let devices: Vec<DeviceArg> = match self.devices.is_empty() {
            true => vec![device],
            false => self.devices.iter().map(|d| parse_replica_device(d)).collect::<anyhow::Result<_>>()?,
        };
        if devices.iter().any(|d| std::mem::discriminant(d) != std::mem::discriminant(&devices[0])) {
            bail!("--devices mixes CPU and CUDA devices: {}", self.devices.join(","));
        }
        let spec = sca_dist::GroupSpec {
            local: devices.len(),
            nodes: self.nodes,
            node_rank: self.node_rank,
            coordinator: self.coordinator.clone(),
            node_host: self.node_host.clone(),
            data_port: self.data_port,
        };
        spec.validate()?;
        Ok((devices, spec))
    }
}

/// `cpu`, `cpu:N` (a CPU replica; the index only counts), `cuda:N`.
fn parse_replica_device(s: &str) -> anyhow::Result<DeviceArg> {
    match s.strip_prefix("cpu:") {
        Some(n) if n.parse::<usize>().is_ok() => Ok(DeviceArg::Cpu),
        _ => s.parse::<DeviceArg>().map_err(|e| anyhow::anyhow!("--devices: {e}")),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (cfg, dir, resume) = match &args.resume {
        Some(dir) => {
            let path = dir.join("config.json");
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            (sca_train::config::parse(&text, &path.display().to_string(), &args.overrides)?, dir.clone(), true)
        }
        None => {
            let (text, name) = match &args.config {
                Some(p) => (std::fs::read_to_string(p).with_context(|| format!("reading config {}", p.display()))?, p.display().to_string()),
                None => (DEFAULT_CONFIG.to_string(), "configs/default.json (built in)".to_string()),
            };
            let cfg = sca_train::config::parse(&text, &name, &args.overrides)?;
            let dir = match &args.out {
                Some(d) => d.clone(),
                // Without --out a rerun goes next to the earlier ones: runs/<name>, <name>-2, ...
                None => (1..)
                    .map(|i| Path::new("runs").join(if i == 1 { cfg.name.clone() } else { format!("{}-{i}", cfg.name) }))
                    .find(|d| !d.exists())
                    .expect("some name is free"),
            };
            if run_dir::latest_checkpoint_exists(&dir) {
                bail!("{} already holds a run; continue it with `sca pretrain --resume {}` or choose another --out", dir.display(), dir.display());
            }
            (cfg, dir, false)
        }
    };
    let (devices, spec) = args.dist.layout(args.device)?;
    if spec.world() == 1 {
        let choice = args.device.resolve_and_report()?;
        return with_backend!(choice, |B, device| pretrain::<B>(cfg, &dir, resume, &args.overrides, device, Replica::single(), false));
    }
    let world = spec.world();
    sca_train::dist::check_batch_split(cfg.batch_size, world)?;
    eprintln!(
        "data-parallel: {world} replicas ({} per node × {} node(s)), this is node {}, batch {} per replica, {}",
        spec.local, spec.nodes, spec.node_rank, cfg.batch_size / world,
        if args.dist.no_sync_bn { "per-replica batch norm" } else { "synchronised batch norm" }
    );
    if spec.nodes > 1 && spec.node_rank == 0 {
        let port = sca_dist::group::start_coordinator(&spec)?;
        eprintln!("coordinator listening on port {port}");
    }
    sca_dist::group::reset();
    let choices: Vec<Choice> = devices.iter().map(|d| d.resolve()).collect::<anyhow::Result<_>>()?;
    if let Some(&Choice::Cuda(i)) = choices.iter().find(|c| matches!(c, Choice::Cuda(_))) {
        crate::gpu_cache::install_requested(crate::device::gpu_name(i).as_deref())?;
    }
    let sync_bn = !args.dist.no_sync_bn;
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, choice) in choices.into_iter().enumerate() {
        let (cfg, dir, overrides, spec, tx) = (cfg.clone(), dir.clone(), args.overrides.clone(), spec.clone(), tx.clone());
        std::thread::Builder::new().name(format!("replica-{}", spec.rank(i))).spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> anyhow::Result<()> {
                let replica = sca_dist::join(&spec, i)?;
                if replica.is_root() {
                    eprintln!("device: {choice} (rank 0 of {})", replica.world());
                }
                with_backend!(choice, |B, device| pretrain::<B>(cfg, &dir, resume, &overrides, device, replica, sync_bn))
            }));
            let result = result.unwrap_or_else(|_| Err(anyhow::anyhow!("replica {} panicked", spec.rank(i))));
            let _ = tx.send((spec.rank(i), result));
        })?;
    }
    drop(tx);
    for (rank, result) in rx {
        // A replica that fails leaves the others waiting in a collective: stop the process.
        if let Err(e) = result {
            eprintln!("error on replica {rank}: {e:#}");
            std::process::exit(1);
        }
    }
    Ok(())
}

fn pretrain<B: TrackedSum>(cfg: TrainConfig, dir: &Path, resume: bool, overrides: &[String], device: B::Device, replica: Replica, sync_bn: bool) -> anyhow::Result<()> {
    let root = replica.is_root();
    let data = crate::datasets::open(&cfg.data.dataset, cfg.data.train_size, cfg.data.test_size, cfg.seed)?;
    if root {
        eprintln!(
        "run {}: {} on {} ({} train images{}), {} epochs of {} steps",
        dir.display(),
        engine_name(&cfg),
        data.name,
        data.train.len(),
        data.test.as_ref().map(|t| format!(", {} test", t.len())).unwrap_or_default(),
        cfg.epochs,
        sca_data::num_train_batches(data.train.len(), cfg.batch_size),
    );
    }
    let knn = knn_monitor::<B>(&cfg, &data, device.clone(), replica.clone());
    // Seeding and initialising as one step: replica threads share the backend's generator,
    // and rank 0 must draw exactly the weights a single-device run would.
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let mut trainer = {
        let _one_at_a_time = INIT.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(&device, cfg.seed);
        Trainer::<B>::new(cfg.clone(), data.train.clone(), knn, device)
    };
    if let Some(path) = &cfg.model.init_weights {
        trainer.model.backbone = crate::cmd::weights::load_backbone(trainer.model.backbone.clone(), Path::new(path))?;
    }
    // Every replica starts from rank 0's weights.
    trainer.distribute(replica, sync_bn)?;
    if resume {
        // Every replica restores the same checkpoint (node directories must share it).
        let (path, bytes) = run_dir::load_checkpoint(dir, |b| trainer_restore_check(&cfg, b))?;
        trainer.restore(&bytes).with_context(|| format!("restoring {}", path.display()))?;
        if root {
            eprintln!("resumed from {} at epoch {}, batch {} (step {})", path.display(), trainer.epoch, trainer.batch, trainer.step);
            if trainer.queue_reset {
                eprintln!("warning: the checkpoint's SwAV queues were written by another number of replicas; the queues start empty");
            }
        }
        if !overrides.is_empty() && root {
            // The rest of the run follows the changed config; keep config.json telling the truth.
            files::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
            eprintln!("continuing with {} (config.json updated)", overrides.join(", "));
        }
    } else if root {
        std::fs::create_dir_all(dir.join("checkpoints")).with_context(|| format!("creating {}", dir.display()))?;
        files::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
    }
    if !root {
        // Rank 0 writes the run; the others only train (their stop follows rank 0's).
        return match trainer.run(&mut QuietObserver)? {
            RunEnd::Finished | RunEnd::Interrupted { .. } => Ok(()),
        };
    }
    let mut obs = CliObserver::new(dir)?;
    let end = trainer.run(&mut obs);
    obs.finish_bar();
    match end? {
        RunEnd::Interrupted { epoch, batch } => {
            eprintln!("interrupted: checkpoint written at epoch {epoch}, batch {batch}; continue with `sca pretrain --resume {}`", dir.display());
        }
        RunEnd::Finished => {
            let path = dir.join("backbone.safetensors");
            files::write_atomic(&path, &trainer.backbone_safetensors())?;
            eprintln!("done: backbone written to {} (torchvision names)", path.display());
        }
    }
    Ok(())
}

/// Checks a checkpoint's container before it is trusted (CRC and metadata).
fn trainer_restore_check(_cfg: &TrainConfig, bytes: &[u8]) -> Result<(), String> {
    sca_train::checkpoint::Container::decode(bytes).map(|_| ()).map_err(|e| e.to_string())
}

fn engine_name(cfg: &TrainConfig) -> String {
    let engine = match cfg.engine {
        sca_train::config::EngineConfig::Swav { .. } => "SwAV",
        sca_train::config::EngineConfig::Simsiam { .. } => "SimSiam",
    };
    let addon = if cfg.addon.enabled { " + add-on" } else { "" };
    // Only what differs from the defaults, so the common case stays one short line.
    let conv = match (cfg.model.conv, cfg.precision) {
        (sca_backbone::ConvImpl::Auto, sca_backbone::Precision::F32) => String::new(),
        (conv, precision) => format!(" ({conv} convolutions in {precision})"),
    };
    format!("{engine}{addon} / {}{conv}", cfg.model.arch)
}

fn knn_monitor<B: AutodiffBackend>(cfg: &TrainConfig, data: &crate::datasets::Opened, device: B::Device, replica: Replica) -> Option<KnnMonitor<B>> {
    let test = data.test.clone()?;
    let train = data.train.clone();
    let transform = sca_data::EvalTransform::identity(cfg.data.image_size, cfg.data.augment.mean, cfg.data.augment.std);
    let settings = sca_eval::KnnSettings { k: cfg.eval.knn_k, t: cfg.eval.knn_t as f32, chunk: 4096, batch_size: 256, workers: cfg.data.workers };
    Some(Box::new(move |backbone| {
        // Each replica embeds and searches its share; all get the same score.
        let r = sca_eval::knn_eval_across(&replica, backbone, train.clone(), test.clone(), &transform, &settings, &device).map_err(|e| e.to_string())?;
        Ok((r.top1, r.top5))
    }))
}

/// Replicas other than rank 0 write nothing and show nothing.
struct QuietObserver;

impl Observer for QuietObserver {
    fn step(&mut self, _: &StepMetrics) {}
    fn checkpoint(&mut self, _: Vec<u8>, _: Option<usize>) -> Result<(), String> {
        Ok(())
    }
}

/// Progress bar, `metrics.jsonl`, checkpoints and Ctrl-C.
struct CliObserver {
    dir: PathBuf,
    metrics: File,
    bar: Option<ProgressBar>,
    stop: Arc<AtomicBool>,
}

impl CliObserver {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("metrics.jsonl");
        let metrics = OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // A second Ctrl-C kills the process as usual.
        ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\nCtrl-C: finishing this step, writing a checkpoint (press again to abort)");
        })
        .context("installing the Ctrl-C handler")?;
        Ok(Self { dir: dir.to_path_buf(), metrics, bar: None, stop })
    }

    fn finish_bar(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }

    fn say(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{msg}")),
            None => eprintln!("{msg}"),
        }
    }
}

impl Observer for CliObserver {
    fn epoch_start(&mut self, epoch: usize, batches: usize, start_batch: usize) {
        self.finish_bar();
        let bar = ProgressBar::new(batches as u64).with_position(start_batch as u64);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix(epoch.to_string());
        self.bar = Some(bar);
    }

    fn step(&mut self, m: &StepMetrics) {
        if let Some(bar) = &self.bar {
            let addon = match (m.loss_mu, m.loss_cls) {
                (Some(mu), Some(cls)) => format!(" mu {mu:.4} cls {cls:.3}"),
                _ => String::new(),
            };
            bar.set_message(format!("loss {:.4} (ssl {:.4}{addon}) {:.1} img/s", m.loss, m.loss_ssl, m.images_per_s));
            bar.set_position(m.batch as u64);
        }
    }

    fn record(&mut self, line: serde_json::Value) {
        if line.get("epoch_seconds").is_some() {
            let get = |k: &str| line.get(k).and_then(|v| v.as_f64());
            let knn = get("knn_top1").map(|v| format!(", KNN top-1 {v:.2}%")).unwrap_or_default();
            self.say(&format!(
                "epoch {} done: loss {:.4} (ssl {:.4}){knn}, {:.0} s",
                line["epoch"], get("loss").unwrap_or(f64::NAN), get("loss_ssl").unwrap_or(f64::NAN), get("epoch_seconds").unwrap_or(0.0)
            ));
        }
        // A lost metrics line must not stop training; say so once per failure.
        if let Err(e) = writeln!(self.metrics, "{line}").and_then(|_| self.metrics.flush()) {
            self.say(&format!("warning: could not append to metrics.jsonl: {e}"));
        }
        if line.get("epoch_seconds").is_some() {
            if let Err(e) = crate::curves::write(&self.dir) {
                self.say(&format!("warning: could not draw curves.png: {e:#}"));
            }
        }
    }

    fn info(&mut self, msg: &str) {
        self.say(msg);
    }

    fn checkpoint(&mut self, bytes: Vec<u8>, keep_epoch: Option<usize>) -> Result<(), String> {
        run_dir::save_checkpoint(&self.dir, &bytes, keep_epoch).map_err(|e| format!("{e:#}"))
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}
