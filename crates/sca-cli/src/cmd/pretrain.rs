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

use crate::device::DeviceArg;
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
    let choice = args.device.resolve_and_report()?;
    with_backend!(choice, |B, device| pretrain::<B>(cfg, &dir, resume, &args.overrides, device))
}

fn pretrain<B: AutodiffBackend>(cfg: TrainConfig, dir: &Path, resume: bool, overrides: &[String], device: B::Device) -> anyhow::Result<()> {
    let data = crate::datasets::open(&cfg.data.dataset, cfg.data.train_size, cfg.data.test_size, cfg.seed)?;
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
    B::seed(&device, cfg.seed);
    let knn = knn_monitor::<B>(&cfg, &data, device.clone());
    let mut trainer = Trainer::<B>::new(cfg.clone(), data.train.clone(), knn, device);
    if let Some(path) = &cfg.model.init_weights {
        trainer.model.backbone = crate::cmd::weights::load_backbone(trainer.model.backbone.clone(), Path::new(path))?;
    }
    if resume {
        let (path, bytes) = run_dir::load_checkpoint(dir, |b| trainer_restore_check(&cfg, b))?;
        trainer.restore(&bytes).with_context(|| format!("restoring {}", path.display()))?;
        eprintln!("resumed from {} at epoch {}, batch {} (step {})", path.display(), trainer.epoch, trainer.batch, trainer.step);
        if !overrides.is_empty() {
            // The rest of the run follows the changed config; keep config.json telling the truth.
            files::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
            eprintln!("continuing with {} (config.json updated)", overrides.join(", "));
        }
    } else {
        std::fs::create_dir_all(dir.join("checkpoints")).with_context(|| format!("creating {}", dir.display()))?;
        files::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
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
    format!("{engine}{} / {}", if cfg.addon.enabled { " + add-on" } else { "" }, cfg.model.arch)
}

fn knn_monitor<B: AutodiffBackend>(cfg: &TrainConfig, data: &crate::datasets::Opened, device: B::Device) -> Option<KnnMonitor<B>> {
    let test = data.test.clone()?;
    let train = data.train.clone();
    let transform = sca_data::EvalTransform::identity(cfg.data.image_size, cfg.data.augment.mean, cfg.data.augment.std);
    let (k, t, workers) = (cfg.eval.knn_k, cfg.eval.knn_t, cfg.data.workers);
    let classes = train.num_classes();
    Some(Box::new(move |backbone| {
        let f = |ds| sca_eval::extract_features(backbone, ds, &transform, 256, workers, &device).map_err(|e| e.to_string());
        let (bank, bank_labels) = f(train.clone())?;
        let (queries, query_labels) = f(test.clone())?;
        let r = sca_eval::weighted_knn(&bank, &bank_labels, &queries, &query_labels, classes, k, t as f32, 4096);
        Ok((r.top1, r.top5))
    }))
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
