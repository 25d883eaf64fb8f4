//! `sca data ...`: check a dataset, preview augmentations, build a class subset, and
//! benchmark the decode + augmentation pipeline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use sca_data::fashion_mnist::DEFAULT_ROOT as FMNIST_ROOT;
use sca_data::image_folder::{ImageFolder, ImageFolderOptions, Verify};
use sca_data::subset_builder::{build_subset, LinkMode};
use sca_data::{AugmentConfig, BBox, Dataset, DatasetSpec, LoaderConfig};

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Count images per class, summarise image sizes and boxes, list bad files.
    Check(CheckArgs),
    /// Write a grid of augmented views: each source, its multi-crop views and its positives.
    Preview(PreviewArgs),
    /// Copy or link a reproducible choice of classes of an ImageFolder tree (e.g. ImageNet-50).
    Subset(SubsetArgs),
    /// Decoded + augmented images/s per core: 2×224+6×96 from ImageNet-sized JPEGs, and the
    /// built-in scenes.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
pub struct DatasetArgs {
    /// `builtin`, `fashion-mnist`, or a folder: an ImageFolder root, or one holding train/ and val/.
    #[arg(long, default_value = "builtin")]
    dataset: String,
    /// A JSON dataset spec (e.g. {"kind":"image_folder","train":"...","val":"..."}); overrides --dataset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the Fashion-MNIST IDX files are.
    #[arg(long, default_value = FMNIST_ROOT)]
    fmnist_root: PathBuf,
    /// Built-in scenes: image side in pixels.
    #[arg(long, default_value_t = 64)]
    image_size: usize,
    /// Built-in scenes: generator seed.
    #[arg(long, default_value_t = 0)]
    scene_seed: u64,
    /// A corrupt image is an error instead of a skipped file.
    #[arg(long)]
    strict: bool,
}

impl DatasetArgs {
    fn spec(&self) -> anyhow::Result<DatasetSpec> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            return serde_json::from_str(&text).with_context(|| format!("parsing the dataset spec in {}", path.display()));
        }
        Ok(match self.dataset.as_str() {
            "builtin" => builtin(self.image_size, 5000, 1000, self.scene_seed),
            "fashion-mnist" | "fashion_mnist" => DatasetSpec::fashion_mnist(&self.fmnist_root),
            dir => {
                let dir = PathBuf::from(dir);
                if !dir.is_dir() {
                    bail!("--dataset {}: not builtin, fashion-mnist or an existing folder", dir.display());
                }
                let (train, val) = if dir.join("train").is_dir() {
                    (dir.join("train"), Some(dir.join("val")).filter(|v| v.is_dir()))
                } else {
                    (dir, None)
                };
                DatasetSpec::ImageFolder { train, val, strict: self.strict, verify: Verify::Header }
            }
        })
    }
}

/// The built-in scenes with 10 classes.
fn builtin(image_size: usize, train: usize, test: usize, seed: u64) -> DatasetSpec {
    DatasetSpec::Builtin { image_size, classes: 10, train, test, seed }
}

#[derive(clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    data: DatasetArgs,
}

#[derive(clap::Args)]
pub struct PreviewArgs {
    #[command(flatten)]
    data: DatasetArgs,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
    /// Source images (rows).
    #[arg(long, default_value_t = 6)]
    n: usize,
    /// Positives per source, drawn from the true labels (standing in for pseudo-labels).
    #[arg(long, default_value_t = 2)]
    positives: usize,
    /// A JSON augmentation config (default: the dataset's SwAV multi-crop).
    #[arg(long)]
    augment: Option<PathBuf>,
    /// Loader seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(clap::Args)]
pub struct SubsetArgs {
    /// Source tree with train/<class>/ (and val/<class>/).
    #[arg(long)]
    src: PathBuf,
    /// Number of classes to keep.
    #[arg(long, default_value_t = 50)]
    classes: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (must be empty or absent).
    #[arg(long)]
    out: PathBuf,
    /// Symlink the images instead of copying them.
    #[arg(long)]
    link: bool,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Folder of JPEGs to use; generated there (~500×375 scenes) when missing or empty.
    /// Without it, files are generated in a temporary folder.
    #[arg(long)]
    jpegs: Option<PathBuf>,
    /// Images per measurement.
    #[arg(long, default_value_t = 200)]
    n: usize,
    /// Worker threads (the rate is divided by this for the per-core figure).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Batch size of the loader.
    #[arg(long, default_value_t = 20)]
    batch: usize,
    /// JPEG quality of generated files.
    #[arg(long, default_value_t = 90)]
    quality: u8,
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Check(a) => check(a),
        DataCommand::Preview(a) => preview(a),
        DataCommand::Subset(a) => subset(a),
        DataCommand::Bench(a) => bench(a),
    }
}

// ---------------------------------------------------------------- check

fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} {msg} {pos} [{elapsed}]").unwrap());
    pb.set_message(msg.to_string());
    pb
}

fn bar(len: usize, msg: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} [{elapsed}<{eta}]").unwrap());
    pb.set_message(msg.to_string());
    pb
}

/// What `check` reports about one split.
struct SplitReport {
    classes: Vec<String>,
    counts: Vec<usize>,
    sizes: Vec<(u32, u32)>,
    boxes: Vec<Option<BBox>>,
    bad: Vec<String>,
}

fn report_folder(ds: &ImageFolder) -> SplitReport {
    SplitReport {
        classes: ds.class_names(),
        counts: sca_data::class_counts(ds),
        sizes: ds.sizes().map(|s| s.to_vec()).unwrap_or_default(),
        boxes: Vec::new(),
        bad: ds.bad_files(),
    }
}

/// Decode (or generate) every sample, in parallel, for sizes and boxes.
fn report_loaded(ds: &dyn Dataset, name: &str) -> anyhow::Result<SplitReport> {
    let pb = bar(ds.len(), name);
    let tick = pb.clone();
    let info = sca_data::scan(ds, Some(Arc::new(move || tick.inc(1))))?;
    pb.finish_and_clear();
    Ok(SplitReport {
        classes: ds.class_names(),
        counts: sca_data::class_counts(ds),
        sizes: info.iter().map(|s| (s.width, s.height)).collect(),
        boxes: info.iter().map(|s| s.bbox).collect(),
        bad: ds.bad_files(),
    })
}

fn print_report(split: &str, r: &SplitReport) {
    let total: usize = r.counts.iter().sum();
    println!("{split}: {total} images in {} classes", r.classes.len());
    let width = r.classes.iter().map(|c| c.len()).max().unwrap_or(5).max(5);
    println!("  {:<width$}  images", "class");
    for (c, n) in r.classes.iter().zip(&r.counts) {
        println!("  {c:<width$}  {n:>6}");
    }
    if !r.sizes.is_empty() {
        let stats = |f: fn(&(u32, u32)) -> u32| {
            let v: Vec<u32> = r.sizes.iter().map(f).collect();
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
            (v.iter().min().copied().unwrap_or(0), mean, v.iter().max().copied().unwrap_or(0))
        };
        let (w0, wm, w1) = stats(|s| s.0);
        let (h0, hm, h1) = stats(|s| s.1);
        println!("  width  min {w0}  mean {wm:.1}  max {w1}");
        println!("  height min {h0}  mean {hm:.1}  max {h1}");
        let mut distinct: std::collections::HashMap<(u32, u32), usize> = Default::default();
        r.sizes.iter().for_each(|s| *distinct.entry(*s).or_default() += 1);
        let (common, times) = distinct.iter().max_by_key(|(s, n)| (**n, std::cmp::Reverse(**s))).unwrap();
        println!("  {} distinct sizes; most common {}×{} ({times} images)", distinct.len(), common.0, common.1);
    }
    let boxes: Vec<(BBox, (u32, u32))> = r.boxes.iter().zip(&r.sizes).filter_map(|(b, s)| b.map(|b| (b, *s))).collect();
    if !boxes.is_empty() {
        let shares: Vec<f32> = boxes.iter().map(|(b, s)| b.area() / (s.0 * s.1) as f32).collect();
        let inside = boxes.iter().all(|(b, s)| b.x0 >= 0.0 && b.y0 >= 0.0 && b.x1 <= s.0 as f32 && b.y1 <= s.1 as f32);
        let mean = shares.iter().sum::<f32>() / shares.len() as f32;
        let min = shares.iter().copied().fold(f32::INFINITY, f32::min);
        let max = shares.iter().copied().fold(0.0, f32::max);
        println!(
            "  boxes: {} of {total}, all inside the image: {}, area share min {:.1}% mean {:.1}% max {:.1}%",
            boxes.len(),
            if inside { "yes" } else { "NO" },
            100.0 * min,
            100.0 * mean,
            100.0 * max
        );
    }
    println!("  bad files: {}", r.bad.len());
    for b in &r.bad {
        println!("    {b}");
    }
}

fn check(a: CheckArgs) -> anyhow::Result<()> {
    let spec = a.data.spec()?;
    let reports = match &spec {
        DatasetSpec::ImageFolder { train, val, strict, .. } => {
            let pb = spinner("decoding");
            let tick = pb.clone();
            let opts = ImageFolderOptions {
                strict: *strict || a.data.strict,
                verify: Verify::Decode,
                progress: Some(Arc::new(move || tick.inc(1))),
            };
            let (tr, va) = ImageFolder::open_pair(train, val.as_deref(), &opts).with_context(|| format!("checking {}", train.display()))?;
            pb.finish_and_clear();
            let mut out = vec![("train", report_folder(&tr))];
            if let Some(v) = va {
                out.push(("val", report_folder(&v)));
            }
            out
        }
        _ => {
            let (tr, te) = spec.open()?;
            let mut out = vec![("train", report_loaded(&*tr, "train")?)];
            if let Some(t) = te {
                out.push(("test", report_loaded(&*t, "test")?));
            }
            out
        }
    };
    let mut bad = 0;
    for (name, r) in &reports {
        print_report(name, r);
        bad += r.bad.len();
    }
    println!("summary: {} images, {bad} bad files skipped", reports.iter().map(|(_, r)| r.counts.iter().sum::<usize>()).sum::<usize>());
    Ok(())
}

// ---------------------------------------------------------------- preview

fn preview(a: PreviewArgs) -> anyhow::Result<()> {
    let spec = a.data.spec()?;
    let aug = match &a.augment {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str::<AugmentConfig>(&text).with_context(|| format!("parsing the augmentation config in {}", p.display()))?
        }
        None => spec.default_augment(),
    };
    let (train, _) = spec.open()?;
    let grid = sca_data::preview_grid(train, &aug, a.n, a.positives, a.seed)?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    grid.save(&a.out).with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "wrote {} ({}×{}): per row the source, {} views ({}), then {} positives",
        a.out.display(),
        grid.width(),
        grid.height(),
        aug.num_views(),
        aug.crops
            .iter()
            .map(|c| format!("{}×{} px, scale {}-{}", c.count, c.size, c.min_scale, c.max_scale))
            .collect::<Vec<_>>()
            .join(" + "),
        a.positives
    );
    Ok(())
}

// ---------------------------------------------------------------- subset

fn subset(a: SubsetArgs) -> anyhow::Result<()> {
    let mode = if a.link { LinkMode::Symlink } else { LinkMode::Copy };
    let r = build_subset(&a.src, &a.out, a.classes, a.seed, mode)?;
    println!(
        "{} {} classes (seed {}) into {}: {} train and {} val images; class list in {}",
        if a.link { "linked" } else { "copied" },
        r.classes.len(),
        a.seed,
        a.out.display(),
        r.train_files,
        r.val_files,
        a.out.join("classes.txt").display()
    );
    Ok(())
}

// ---------------------------------------------------------------- bench

/// CPU seconds used by this process so far (all threads, including finished ones), from
/// /proc/self/stat; `None` where that file does not exist.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) in clock ticks, 100 per second on Linux.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

struct Rate {
    images: usize,
    wall: f64,
    cpu: Option<f64>,
}

impl Rate {
    fn print(&self, what: &str, workers: usize) {
        let per_core = self.images as f64 / self.wall / workers as f64;
        let cpu = self.cpu.map(|c| format!("{:.0} images per CPU-second", self.images as f64 / c)).unwrap_or_else(|| "CPU time n/a".into());
        println!(
            "{what}: {} images in {:.2} s with {workers} worker(s): {:.1} images/s per core ({cpu})",
            self.images, self.wall, per_core
        );
    }
}

fn measure(f: impl FnOnce() -> anyhow::Result<usize>) -> anyhow::Result<Rate> {
    let (c0, t0) = (cpu_seconds(), Instant::now());
    let images = f()?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = c0.zip(cpu_seconds()).map(|(a, b)| b - a).filter(|c| *c > 0.0);
    Ok(Rate { images, wall, cpu })
}

fn count_jpegs(dir: &Path) -> usize {
    sca_data::image_folder::list_images(dir).map(|v| v.len()).unwrap_or(0)
}

fn run_epoch(ds: Arc<dyn Dataset>, aug: &AugmentConfig, cfg: &LoaderConfig) -> anyhow::Result<usize> {
    let mut images = 0;
    for b in sca_data::train_batches(ds, aug, cfg, 0, 0, None) {
        images += b?.indices.len();
    }
    Ok(images)
}

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bench(a: BenchArgs) -> anyhow::Result<()> {
    if a.n == 0 || a.workers == 0 || a.batch == 0 {
        bail!("--n, --workers and --batch must be at least 1");
    }
    let mut _cleanup = None;
    let dir = match &a.jpegs {
        Some(d) => d.clone(),
        None => {
            let d = std::env::temp_dir().join(format!("sca-data-bench-{}", std::process::id()));
            _cleanup = Some(TempDir(d.clone()));
            d
        }
    };
    if count_jpegs(&dir) == 0 {
        let pb = bar(a.n, "generating 500×375 JPEGs");
        let tick = pb.clone();
        sca_data::scenes::write_jpeg_scenes(&dir, a.n, 500, 375, a.quality, Some(Arc::new(move || tick.inc(1))))?;
        pb.finish_and_clear();
        println!("generated {} JPEGs (500×375 built-in scenes, quality {}) in {}", a.n, a.quality, dir.display());
    }
    let paths = sca_data::image_folder::list_images(&dir)?;
    let bytes: u64 = paths.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    let all = ImageFolder::open_flat(&dir, &ImageFolderOptions { verify: Verify::None, ..Default::default() })?;
    let n = a.n.min(all.len());
    let files: Arc<dyn Dataset> = Arc::new(sca_data::Subset::new(Arc::new(all), n, 0));
    println!(
        "using {n} of {} JPEGs in {} (mean file {:.0} KB)",
        paths.len(),
        dir.display(),
        bytes as f64 / paths.len().max(1) as f64 / 1024.0
    );
    let batch = a.batch.min(n);
    let cfg = LoaderConfig { batch_size: batch, workers: a.workers, prefetch: 2, seed: 0, ..Default::default() };

    // Read every file once so the figure measures decoding, not the disk.
    for i in 0..files.len() {
        files.load(i)?;
    }
    let r = measure(|| run_epoch(files.clone(), &AugmentConfig::default(), &cfg))?;
    r.print("JPEG decode + 2×224+6×96 multi-crop", a.workers);

    let spec = builtin(64, a.n.max(batch), 0, 0);
    let (scenes, _) = spec.open()?;
    let g = measure(|| {
        (0..scenes.len()).try_for_each(|i| scenes.load(i).map(|_| ()))?;
        Ok(scenes.len())
    })?;
    g.print("built-in scenes 64 px, generation only (main thread)", 1);
    let aug = spec.default_augment();
    let views = aug.crops.iter().map(|c| format!("{}×{}", c.count, c.size)).collect::<Vec<_>>().join("+");
    let r = measure(|| run_epoch(scenes.clone(), &aug, &cfg))?;
    r.print(&format!("built-in scenes 64 px + {views} multi-crop"), a.workers);
    Ok(())
}
