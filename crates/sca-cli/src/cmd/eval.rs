//! `sca eval-knn`, `sca eval-linear`, `sca cam-metrics`: judge a pretrained backbone.
//!
//! Each reads a run directory from `sca pretrain` (`config.json` + `backbone.safetensors`),
//! or a bare backbone (`--weights FILE --arch A [--small-stem] --dataset ...`), e.g. one
//! converted from torchvision. Results go into the run directory (or `--out`):
//! `knn.json`, `linear/{metrics.json, head.safetensors}`, `cam/{metrics.json, overlays.png}`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use sca_backbone::{Arch, ResNet, ResNetConfig};
use sca_data::{eval_batches, Dataset, DatasetSpec, EvalTransform};
use sca_eval::cam::{cam_batch, scores_csv, CamMetrics, CamRow};
use sca_eval::heatmap::{encode_png, heatmap_grid, heatmap_rows, HeatmapRow};
use sca_eval::probe::ProbeDisplay;
use sca_eval::{extract_pooled, knn, HostFeatures, LinearHead, ProbeConfig, ProbeMode};
use serde_json::{json, Value};

use crate::device::DeviceArg;
use crate::{datasets, files, with_backend};

/// Training split, validation split, dataset name.
type Splits = (Arc<dyn Dataset>, Arc<dyn Dataset>, String);

/// Where the backbone and the data come from, and where results go.
#[derive(clap::Args, Clone, Debug)]
pub struct Source {
    /// Run directory written by `sca pretrain` (reads config.json and backbone.safetensors).
    #[arg(long, required_unless_present = "weights", conflicts_with = "weights")]
    pub run: Option<PathBuf>,
    /// A bare backbone `.safetensors` with torchvision key names (needs --arch).
    #[arg(long, requires = "arch")]
    pub weights: Option<PathBuf>,
    /// Architecture of --weights: resnet18, resnet34 or resnet50.
    #[arg(long, conflicts_with = "run")]
    pub arch: Option<Arch>,
    /// --weights uses the small-image stem (3×3 stride-1 conv, no max-pool).
    #[arg(long, conflicts_with = "run")]
    pub small_stem: bool,
    /// Dataset for --weights: `builtin`, `fashion-mnist`, or an image-folder root holding
    /// `train/` and `val/`.
    #[arg(long, default_value = "builtin", conflicts_with = "run")]
    pub dataset: String,
    /// Input side for --weights (default: the dataset's native size, 224 for image folders).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Output directory (default: the run directory, or the folder of --weights).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Keep a seeded subsample of this many training images (default: the run's setting).
    #[arg(long)]
    pub train_size: Option<usize>,
    /// Keep a seeded subsample of this many validation images (default: the run's setting).
    #[arg(long)]
    pub test_size: Option<usize>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceArg,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Data-loading threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
}

#[derive(clap::Args)]
pub struct KnnArgs {
    #[command(flatten)]
    pub src: Source,
    /// Neighbours.
    #[arg(long, default_value_t = sca_eval::knn::DEFAULT_K)]
    pub k: usize,
    /// Temperature of the neighbour weights exp(sim / t).
    #[arg(long, default_value_t = sca_eval::knn::DEFAULT_T)]
    pub t: f32,
    /// Rows of queries and of the bank per similarity block (bounds memory).
    #[arg(long, default_value_t = sca_eval::knn::DEFAULT_CHUNK)]
    pub chunk: usize,
    /// Also write the features and labels used (`train_features`, `train_labels`,
    /// `test_features`, `test_labels`) to this safetensors file.
    #[arg(long, value_name = "FILE.safetensors")]
    pub dump_features: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct LinearArgs {
    #[command(flatten)]
    pub src: Source,
    /// `cached` (features computed once, fast) or `augmented` (RandomResizedCrop + flip
    /// every epoch, the paper's protocol).
    #[arg(long)]
    pub mode: Option<ProbeMode>,
    /// Override a probe setting, e.g. `--set epochs=10 --set lr=0.1`. Keys: mode, epochs,
    /// batch_size, lr (at batch 256), momentum, weight_decay, min_scale, max_scale, seed, workers.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// One plain line per epoch instead of Burn's terminal dashboard.
    #[arg(long)]
    pub plain: bool,
}

/// CAM (paper eq. 8) from the linear probe's weights, upsampled bilinearly to the input and
/// min-max normalised. The explanation map is built in pixel space: the normalised image is
/// mapped back to [0, 1] pixels (x·std + mean), multiplied by the CAM, and normalised again,
/// so masked-out regions become black. AD/AI compare the softmax probability of the class on
/// the image (Y) and on its explanation map (O).
#[derive(clap::Args)]
pub struct CamArgs {
    #[command(flatten)]
    pub src: Source,
    /// Per-image scores (`index,class,Y,O`) to this CSV file.
    #[arg(long, value_name = "FILE")]
    pub scores_csv: Option<PathBuf>,
    /// Rows of the overlay grid: the first N validation images as image (with its box) |
    /// CAM over the image | explanation map. 0 writes none.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub heatmaps: usize,
    /// Where the overlay grid goes (default: OUT/cam/overlays.png).
    #[arg(long, value_name = "FILE.png")]
    pub heatmaps_file: Option<PathBuf>,
    /// Epochs of the cached-mode probe trained first when OUT/linear/head.safetensors is absent.
    #[arg(long, default_value_t = 100)]
    pub probe_epochs: usize,
    /// One plain line per epoch for that probe instead of Burn's terminal dashboard.
    #[arg(long)]
    pub plain: bool,
}

/// Everything resolved from a run directory or from the bare-weights flags.
#[derive(Clone, Debug)]
struct Setup {
    arch: Arch,
    small_stem: bool,
    weights: PathBuf,
    out: PathBuf,
    spec: DatasetSpec,
    train_size: Option<usize>,
    test_size: Option<usize>,
    seed: u64,
    image_size: usize,
    mean: [f32; 3],
    std: [f32; 3],
    transform: EvalTransform,
    batch_size: usize,
    workers: usize,
}

fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k)).filter(|v| !v.is_null())
}

fn rgb(v: Option<&Value>) -> Option<[f32; 3]> {
    let a = v?.as_array()?;
    (a.len() == 3).then(|| std::array::from_fn(|i| a[i].as_f64().unwrap_or(0.0) as f32))
}

/// The evaluation transform at `size` pixels: datasets of square images of one size
/// (built-in, Fashion-MNIST) are resized whole; image folders get torchvision's
/// `Resize(size·256/224) + CenterCrop(size)` (256/224 at ImageNet scale).
fn eval_transform(spec: &DatasetSpec, size: usize, mean: [f32; 3], std: [f32; 3]) -> EvalTransform {
    match spec.image_size() {
        Some(_) => EvalTransform { resize: size, crop: size, mean, std },
        None => EvalTransform { resize: (size as f64 * 256.0 / 224.0).round() as usize, crop: size, mean, std },
    }
}

impl Source {
    fn resolve(&self) -> anyhow::Result<Setup> {
        let (arch, small_stem, weights, default_out, spec, mut train_size, mut test_size, seed, size, norm);
        if let Some(run) = &self.run {
            let path = run.join("config.json");
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let cfg: Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
            let name = get(&cfg, "model.arch").and_then(Value::as_str).with_context(|| format!("{}: no model.arch", path.display()))?;
            arch = name.parse::<Arch>().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            small_stem = get(&cfg, "model.small_stem").and_then(Value::as_bool).unwrap_or(false);
            let ds = get(&cfg, "data.dataset").with_context(|| format!("{}: no data.dataset", path.display()))?;
            spec = serde_json::from_value::<DatasetSpec>(ds.clone()).with_context(|| format!("{}: data.dataset", path.display()))?;
            train_size = get(&cfg, "data.train_size").and_then(Value::as_u64).map(|v| v as usize);
            test_size = get(&cfg, "data.test_size").and_then(Value::as_u64).map(|v| v as usize);
            seed = get(&cfg, "seed").and_then(Value::as_u64).unwrap_or(0);
            size = get(&cfg, "data.image_size").and_then(Value::as_u64).map(|v| v as usize);
            norm = rgb(get(&cfg, "data.augment.mean")).zip(rgb(get(&cfg, "data.augment.std")));
            weights = run.join("backbone.safetensors");
            default_out = run.clone();
            if !weights.exists() {
                bail!("{} not found: has pretraining finished? (`sca pretrain --resume {}` continues it)", weights.display(), run.display());
            }
        } else {
            let w = self.weights.clone().expect("clap requires --run or --weights");
            arch = self.arch.expect("clap requires --arch with --weights");
            small_stem = self.small_stem;
            spec = match self.dataset.as_str() {
                "builtin" => DatasetSpec::builtin(),
                "fashion-mnist" | "fashion_mnist" => DatasetSpec::fashion_mnist(sca_data::fashion_mnist::DEFAULT_ROOT),
                dir => {
                    let root = PathBuf::from(dir);
                    let (train, val) = (root.join("train"), root.join("val"));
                    if !(train.is_dir() && val.is_dir()) {
                        bail!("--dataset {dir}: expected `builtin`, `fashion-mnist` or a folder with train/ and val/ class folders");
                    }
                    DatasetSpec::image_folder(train, Some(val))
                }
            };
            (train_size, test_size, seed, size, norm) = (None, None, 0, None, None);
            default_out = w.parent().filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
            weights = w;
        }
        if self.train_size.is_some() {
            train_size = self.train_size;
        }
        if self.test_size.is_some() {
            test_size = self.test_size;
        }
        let image_size = self.image_size.or(size).or(spec.image_size()).unwrap_or(224);
        let (mean, std) = norm.unwrap_or_else(|| spec.mean_std());
        Ok(Setup {
            arch,
            small_stem,
            weights,
            out: self.out.clone().unwrap_or(default_out),
            transform: eval_transform(&spec, image_size, mean, std),
            spec,
            train_size,
            test_size,
            seed,
            image_size,
            mean,
            std,
            batch_size: self.batch_size.max(1),
            workers: self.workers,
        })
    }
}

impl Setup {
    /// The backbone on the plain backend: BatchNorm uses its running statistics.
    fn backbone<B: Backend>(&self, device: &B::Device) -> anyhow::Result<ResNet<B>> {
        let model = ResNetConfig::new(self.arch).with_small_stem(self.small_stem).init::<B>(device);
        crate::cmd::weights::load_backbone(model, &self.weights)
    }

    /// The training and validation splits and the dataset's name.
    fn open(&self) -> anyhow::Result<Splits> {
        let data = datasets::open(&self.spec, self.train_size, self.test_size, self.seed)?;
        let test = data.test.with_context(|| format!("{} has no validation split to evaluate on", data.name))?;
        Ok((data.train, test, data.name))
    }

    fn describe(&self, train: usize, test: usize, name: &str) {
        eprintln!(
            "{} ({} stem) from {}; {name}: {train} train / {test} validation images at {} px",
            self.arch,
            if self.small_stem { "small-image" } else { "ImageNet" },
            self.weights.display(),
            self.image_size
        );
    }

    fn source_json(&self, train: usize, test: usize) -> Value {
        json!({
            "weights": self.weights.display().to_string(),
            "arch": self.arch.name(),
            "small_stem": self.small_stem,
            "dataset": self.spec,
            "train_images": train,
            "test_images": test,
            "image_size": self.image_size,
        })
    }
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len as u64);
    b.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} ETA {eta}").expect("static template").progress_chars("=> "),
    );
    b.set_prefix(what.to_string());
    b
}

/// Pooled features of a dataset with a progress bar.
fn features<B: Backend>(
    s: &Setup,
    backbone: &ResNet<B>,
    ds: Arc<dyn Dataset>,
    normalize: bool,
    what: &str,
    device: &B::Device,
) -> anyhow::Result<(Tensor<B, 2>, Vec<usize>)> {
    let pb = bar(ds.len(), what);
    let r = extract_pooled(backbone, ds, &s.transform, s.batch_size, s.workers, normalize, device, &mut |done, _| {
        pb.set_position(done as u64)
    });
    pb.finish_and_clear();
    r.with_context(|| format!("extracting {what}"))
}

fn write_json(path: &Path, v: &Value) -> anyhow::Result<()> {
    files::write_atomic(path, format!("{}\n", serde_json::to_string_pretty(v)?).as_bytes())
}

// ---------------------------------------------------------------- eval-knn

pub fn run_knn(args: KnnArgs) -> anyhow::Result<()> {
    let setup = args.src.resolve()?;
    let choice = args.src.device.resolve_and_report()?;
    with_backend!(choice, |B, device| knn_cmd::<B>(&setup, &args, device))
}

fn knn_cmd<B: AutodiffBackend>(s: &Setup, args: &KnnArgs, device: B::Device) -> anyhow::Result<()> {
    if args.k == 0 || args.t.is_nan() || args.t <= 0.0 || args.chunk == 0 {
        bail!("--k and --chunk must be at least 1 and --t positive");
    }
    let start = Instant::now();
    let backbone = s.backbone::<B::InnerBackend>(&device)?;
    let (train, test, name) = s.open()?;
    s.describe(train.len(), test.len(), &name);
    let classes = train.num_classes();
    let (bank, bank_labels) = features(s, &backbone, train, true, "train features", &device)?;
    let (queries, query_labels) = features(s, &backbone, test, true, "validation features", &device)?;
    let search_start = Instant::now();
    let r = knn::weighted_knn(&bank, &bank_labels, &queries, &query_labels, classes, args.k, args.t, args.chunk);
    let (seconds, search_seconds) = (start.elapsed().as_secs_f64(), search_start.elapsed().as_secs_f64());
    let out = s.out.join("knn.json");
    let mut v = json!({
        "top1": r.top1, "top5": r.top5, "k": r.k, "t": r.t, "n": r.n, "seconds": seconds, "search_seconds": search_seconds,
    });
    v["source"] = s.source_json(bank_labels.len(), query_labels.len());
    write_json(&out, &v)?;
    if let Some(path) = &args.dump_features {
        let d = bank.dims()[1];
        files::write_atomic(path, &sca_eval::features::features_safetensors(bank, &bank_labels, queries, &query_labels))?;
        eprintln!("features written to {} (L2-normalised, {d}-d)", path.display());
    }
    println!(
        "KNN (k={}, T={}): top-1 {:.2}%  top-5 {:.2}%  ({} queries x {} bank: {:.0} s in all, {:.1} s of it the search) -> {}",
        r.k,
        r.t,
        r.top1,
        r.top5,
        r.n,
        bank_labels.len(),
        seconds,
        search_seconds,
        out.display()
    );
    Ok(())
}

// ---------------------------------------------------------------- eval-linear

pub fn run_linear(args: LinearArgs) -> anyhow::Result<()> {
    let setup = args.src.resolve()?;
    let mut base = serde_json::to_value(ProbeConfig { seed: setup.seed, workers: setup.workers, ..ProbeConfig::default() })?;
    if let Some(mode) = args.mode {
        base["mode"] = serde_json::to_value(mode)?;
    }
    for o in &args.overrides {
        sca_train::config::apply_override(&mut base, o)?;
    }
    let cfg: ProbeConfig = serde_json::from_value(base).context("probe settings (--set)")?;
    cfg.validate().map_err(|e| anyhow::anyhow!("probe settings: {e}"))?;
    let display = display(args.plain);
    let choice = args.src.device.resolve_and_report()?;
    with_backend!(choice, |B, device| linear_cmd::<B>(&setup, &cfg, display, device).map(|_| ()))
}

fn display(plain: bool) -> ProbeDisplay {
    if !plain && std::io::stdout().is_terminal() {
        ProbeDisplay::Burn
    } else {
        ProbeDisplay::Lines
    }
}

/// Trains the probe and writes `OUT/linear/{metrics.json, head.safetensors}`.
fn linear_cmd<B: AutodiffBackend>(
    s: &Setup,
    cfg: &ProbeConfig,
    display: ProbeDisplay,
    device: B::Device,
) -> anyhow::Result<LinearHead<B::InnerBackend>> {
    let start = Instant::now();
    let dir = s.out.join("linear");
    // The Learner's logs and checkpoints of an earlier probe would mix with this one's.
    for sub in ["train", "valid", "checkpoint"] {
        let p = dir.join(sub);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing the earlier probe's {}", p.display()))?;
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let backbone = s.backbone::<B::InnerBackend>(&device)?;
    let (train, test, name) = s.open()?;
    s.describe(train.len(), test.len(), &name);
    let classes = train.num_classes();
    eprintln!(
        "linear probe ({}): {} epochs, batch {}, lr {} (= {} x {}/256), momentum {}, weight decay {}, {} features; Learner logs in {}",
        cfg.mode,
        cfg.epochs,
        cfg.batch_size,
        cfg.scaled_lr(),
        cfg.lr,
        cfg.batch_size,
        cfg.momentum,
        cfg.weight_decay,
        if cfg.standardize { "standardised" } else { "raw" },
        dir.display()
    );
    let (vf, vl) = features(s, &backbone, test.clone(), false, "validation features", &device)?;
    let valid = HostFeatures::from_tensor(vf, vl);
    let n_train = train.len();
    let cached = match cfg.mode {
        ProbeMode::Cached => {
            let (tf, tl) = features(s, &backbone, train.clone(), false, "train features", &device)?;
            Some(HostFeatures::from_tensor(tf, tl))
        }
        ProbeMode::Augmented => None,
    };
    let probe_start = Instant::now();
    let outcome = match cached {
        Some(train) => sca_eval::probe::train_cached::<B>(&train, &valid, classes, cfg, display, &dir, &device),
        None => sca_eval::augmented::train_augmented::<B>(
            backbone, train, s.image_size, s.mean, s.std, &valid, cfg, display, &dir, &device,
        )?,
    };
    let (seconds, probe_seconds) = (start.elapsed().as_secs_f64(), probe_start.elapsed().as_secs_f64());
    files::write_atomic(&dir.join("head.safetensors"), &outcome.head.to_safetensors())?;
    let mut v = json!({
        "top1": outcome.top1,
        "top5": outcome.top5,
        "mode": cfg.mode,
        "epochs": cfg.epochs,
        "classes": classes,
        "config": cfg,
        "lr_scaled": cfg.scaled_lr(),
        "seconds": seconds,
        "probe_seconds": probe_seconds,
        "curve": outcome.curve,
    });
    v["source"] = s.source_json(n_train, test.len());
    write_json(&dir.join("metrics.json"), &v)?;
    println!(
        "linear probe ({}, {} epochs): top-1 {:.2}%  top-5 {:.2}%  ({:.0} s) -> {}",
        cfg.mode,
        cfg.epochs,
        outcome.top1,
        outcome.top5,
        seconds,
        dir.join("metrics.json").display()
    );
    Ok(outcome.head)
}

// ---------------------------------------------------------------- cam-metrics

pub fn run_cam(args: CamArgs) -> anyhow::Result<()> {
    let setup = args.src.resolve()?;
    let choice = args.src.device.resolve_and_report()?;
    with_backend!(choice, |B, device| cam_cmd::<B>(&setup, &args, device))
}

fn cam_cmd<B: AutodiffBackend>(s: &Setup, args: &CamArgs, device: B::Device) -> anyhow::Result<()> {
    let head_path = s.out.join("linear").join("head.safetensors");
    let head: LinearHead<B::InnerBackend> = if head_path.exists() {
        let bytes = files::read(&head_path)?;
        LinearHead::from_safetensors(&bytes, &device).map_err(|e| anyhow::anyhow!("{}: {e}", head_path.display()))?
    } else {
        eprintln!(
            "no linear head at {}: training one first (cached features, {} epochs; `sca eval-linear` trains it with other settings)",
            head_path.display(),
            args.probe_epochs
        );
        let cfg = ProbeConfig { epochs: args.probe_epochs, seed: s.seed, workers: s.workers, ..ProbeConfig::default() };
        linear_cmd::<B>(s, &cfg, display(args.plain), device.clone())?
    };
    let start = Instant::now();
    let backbone = s.backbone::<B::InnerBackend>(&device)?;
    let (train, test, name) = s.open()?;
    s.describe(train.len(), test.len(), &name);
    if head.num_features() != s.arch.feature_dim() || head.num_classes() != test.num_classes() {
        bail!(
            "{}: head is {} classes x {} features, but the backbone gives {} features and the dataset has {} classes",
            head_path.display(),
            head.num_classes(),
            head.num_features(),
            s.arch.feature_dim(),
            test.num_classes()
        );
    }
    let want_maps = args.heatmaps;
    let mut rows: Vec<CamRow> = Vec::with_capacity(test.len());
    let mut maps: Vec<HeatmapRow> = Vec::new();
    let pb = bar(test.len(), "CAM");
    for batch in eval_batches(test.clone(), &s.transform, s.batch_size, s.workers) {
        let batch = batch.context("loading validation images")?;
        let images = sca_eval::features::image_tensor::<B::InnerBackend>(batch.images, &device);
        let out = cam_batch(&backbone, &head, images.clone(), &batch.indices, &batch.labels, &batch.bboxes, s.mean, s.std);
        if maps.len() < want_maps {
            let take = (want_maps - maps.len()).min(batch.indices.len());
            let sel = |t: Tensor<B::InnerBackend, 4>| t.slice(0..take);
            let cams = out.cams.clone().slice(0..take);
            maps.extend(heatmap_rows(sel(images), cams, sel(out.explanations), s.mean, s.std, &batch.bboxes[..take]));
        }
        rows.extend(out.rows);
        pb.set_position(rows.len() as u64);
    }
    pb.finish_and_clear();
    let m = CamMetrics::from_rows(&rows);
    let seconds = start.elapsed().as_secs_f64();
    let dir = s.out.join("cam");
    let mut v = serde_json::to_value(&m)?;
    v["seconds"] = json!(seconds);
    v["head"] = json!(head_path.display().to_string());
    v["source"] = s.source_json(train.len(), test.len());
    write_json(&dir.join("metrics.json"), &v)?;
    if let Some(path) = &args.scores_csv {
        files::write_atomic(path, scores_csv(&rows).as_bytes())?;
        eprintln!("per-image scores written to {}", path.display());
    }
    if want_maps > 0 {
        let path = args.heatmaps_file.clone().unwrap_or_else(|| dir.join("overlays.png"));
        files::write_atomic(&path, &encode_png(&heatmap_grid(&maps)))?;
        eprintln!("CAM overlays of {} images written to {} (image | CAM over image | explanation map)", maps.len(), path.display());
    }
    let loc = match (m.pointing_game, m.energy_in_box) {
        (Some(p), Some(e)) => format!("  pointing game {p:.2}%  energy in box {e:.2}%"),
        _ => String::new(),
    };
    println!(
        "CAM (n={}): AD {:.2}%  AI {:.2}%  (predicted class: AD {:.2}%  AI {:.2}%){loc}  ({:.0} s) -> {}",
        m.n,
        m.ad,
        m.ai,
        m.ad_pred,
        m.ai_pred,
        seconds,
        dir.join("metrics.json").display()
    );
    Ok(())
}
