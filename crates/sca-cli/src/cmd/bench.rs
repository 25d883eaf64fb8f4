//! `sca bench`: throughput figures for docs/BENCHMARKS.md. Each prints a table and can
//! write JSON (`--json FILE`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor};
use sca_data::{ImageBatch, TrainBatch};
use sca_train::{TrainConfig, Trainer};
use serde_json::json;

use crate::device::DeviceArg;
use sca_dist::Replica;
use crate::{files, with_backend};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Train-step images/s: ResNet-18 (small stem, 32 px) and ResNet-50 (224 px), SwAV.
    Pretrain(Common),
    /// The add-on's own share of a training step.
    Addon(Common),
    /// k-means on random unit vectors.
    Kmeans {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100_000, value_parser = at_least_one)]
        n: usize,
        #[arg(long, default_value_t = 128, value_parser = at_least_one)]
        d: usize,
        #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
        c: usize,
        #[arg(long, default_value_t = 10, value_parser = at_least_one)]
        iterations: usize,
    },
    /// The GPU set: ResNet-50 SwAV step (without and with the add-on), forward-only features,
    /// k-means on 1.28M × 128 into 3,000 clusters, chunked KNN of 50,000 × 1.28M × 2048.
    /// `--scale` shrinks the k-means and KNN sizes (e.g. 0.001 for a CPU smoke run).
    Gpu {
        #[command(flatten)]
        common: Common,
        /// Multiplies N of k-means and both sizes of the KNN.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Input side of the ResNet-50 cases.
        #[arg(long, default_value_t = 224, value_parser = at_least_one)]
        size: usize,
        /// Batch of the forward-only feature case.
        #[arg(long, default_value_t = 256, value_parser = at_least_one)]
        feature_batch: usize,
        /// How the convolutions run: gemm (CUDA: implicit-GEMM kernels chosen without
        /// autotune), matmul (im2col + GEMM), native (the backend's kernels, autotuned on
        /// CUDA) or auto (gemm on CUDA, matmul elsewhere).
        #[arg(long, default_value = "gemm")]
        conv: sca_backbone::ConvImpl,
        /// Arithmetic of the convolutions: f32, bf16 or f16.
        #[arg(long, default_value = "f32")]
        precision: sca_backbone::Precision,
        /// Keep activations channels-last (NHWC) between the convolutions, as training
        /// does by default (`model.channels_last`; CUDA with gemm convolutions).
        #[arg(long)]
        channels_last: bool,
        /// Keep activations NCHW instead (`model.channels_last=false`).
        #[arg(long, conflicts_with = "channels_last")]
        nchw: bool,
        /// Run only these cases (letters a-e, e.g. `--only a,c`).
        #[arg(long, value_delimiter = ',', default_value = "a,b,c,d,e")]
        only: Vec<char>,
    },
    /// Every convolution shape of a ResNet, each pass on each candidate kernel: a per-layer
    /// table, and on CUDA the fastest kernel per shape and pass written as the convolution
    /// plan later runs use (`conv-plan.json` in the GPU cache). `--batch` is images per
    /// convolution (default: 128 on CUDA, two 224-px crops of 64; 2 on the CPU).
    Convs {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: crate::cmd::bench_convs::ConvsArgs,
    },
    /// Data-parallel step on CPU replicas (threads, burn-collective): time per step, time in
    /// collectives and its share, bytes summed per step; against one replica with the same
    /// global batch. ResNet-18, small stem, 32 px, SwAV + add-on, SyncBN.
    Distributed {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 2, value_parser = at_least_one)]
        replicas: usize,
    },
}

#[derive(clap::Args, Clone)]
pub struct Common {
    #[arg(long, default_value = "auto")]
    pub device: DeviceArg,
    /// Timed steps after the warm-up step.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    pub steps: usize,
    /// Also write the figures here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Batch size for ResNet-50 (default: 16 on CPU, 64 on CUDA).
    #[arg(long, value_parser = at_least_one)]
    pub batch: Option<usize>,
}

/// The value of a count (steps, a batch, a size): a whole number of at least 1, so that a
/// zero is refused by name instead of measuring nothing.
pub(crate) fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    let common = match &cmd {
        BenchCommand::Pretrain(c)
        | BenchCommand::Addon(c)
        | BenchCommand::Kmeans { common: c, .. }
        | BenchCommand::Gpu { common: c, .. }
        | BenchCommand::Convs { common: c, .. }
        | BenchCommand::Distributed { common: c, .. } => {
            c.clone()
        }
    };
    let choice = common.device.resolve_and_report()?;
    let device_name = choice.to_string();
    if let BenchCommand::Convs { common, args } = &cmd {
        // Its own tables (per shape and kernel), not the throughput table below.
        let cuda = matches!(choice, crate::device::Choice::Cuda(_));
        let batch = common.batch.unwrap_or(if cuda { 128 } else { 2 });
        return with_backend!(choice, |B, device| crate::cmd::bench_convs::convs::<B>(args, batch, common.steps, &device_name, common.json.as_ref(), device));
    }
    let rows = with_backend!(choice, |B, device| match cmd {
        BenchCommand::Pretrain(c) => pretrain::<B>(&c, matches!(choice, crate::device::Choice::Cuda(_)), device)?,
        BenchCommand::Addon(c) => addon::<B>(&c, device)?,
        BenchCommand::Kmeans { n, d, c, iterations, .. } => kmeans::<B>(n, d, c, iterations, device)?,
        BenchCommand::Gpu { common, scale, size, feature_batch, conv, precision, nchw, only, .. } => {
            let channels_last = !nchw;
            let cuda = matches!(choice, crate::device::Choice::Cuda(_));
            gpu::<B>(&common, cuda, GpuCases { scale, size, feature_batch, conv, precision, channels_last, only }, &device_name, device)?
        }
        BenchCommand::Distributed { common, replicas } => distributed::<B>(&common, replicas, device)?,
        BenchCommand::Convs { .. } => unreachable!("handled above"),
    });
    println!("\n{:<64} {:>12} {:>12} {:>14}", "case", "images/s", "ms/step", "first step s");
    for r in &rows {
        let f = |k: &str| r.get(k).and_then(|v| v.as_f64()).map(|v| format!("{v:.2}")).unwrap_or("-".into());
        println!("{:<64} {:>12} {:>12} {:>14}", r["case"].as_str().unwrap_or("?"), f("images_per_s"), f("ms_per_step"), f("first_step_s"));
    }
    // Explicit kernels that refused a shape: the step ran on a slower or autotuned one there.
    let refusals = sca_kernels::fallbacks().len();
    if refusals > 0 {
        println!("\n{refusals} explicit-kernel refusals (listed in the JSON, `fallbacks`)");
    }
    match &common.json {
        Some(path) => write_rows(path, &device_name, &rows),
        None => Ok(()),
    }
}

/// The JSON of `--json`: the device, the rows, and the shapes explicit kernels refused
/// (the step ran on a slower or autotuned kernel there).
fn write_rows(path: &Path, device_name: &str, rows: &[serde_json::Value]) -> anyhow::Result<()> {
    let fallbacks: Vec<_> = sca_kernels::fallbacks().into_iter().map(|f| json!({ "what": f.what, "instead": f.instead })).collect();
    let doc = json!({ "device": device_name, "rows": rows, "fallbacks": fallbacks });
    files::write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())
}

/// The default config, shrunk to the shapes being measured.
fn config(overrides: &[&str]) -> anyhow::Result<TrainConfig> {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Ok(sca_train::config::parse(crate::cmd::pretrain::DEFAULT_CONFIG, "configs/default.json (built in)", &o)?)
}

fn random_images<B: Backend>(n: usize, size: usize, device: &B::Device) -> ImageBatch {
    let t = Tensor::<B, 4>::random([n, 3, size, size], Distribution::Normal(0.0, 1.0), device);
    ImageBatch { data: t.into_data().to_vec::<f32>().expect("f32"), shape: [n, 3, size, size] }
}

fn random_batch<B: Backend>(b: usize, views: usize, size: usize, positives: usize, device: &B::Device) -> TrainBatch {
    TrainBatch {
        indices: (0..b).collect(),
        labels: vec![0; b],
        crops: (0..views).map(|_| random_images::<B>(b, size, device)).collect(),
        positives: (positives > 0).then(|| random_images::<B>(b * positives, size, device)),
        positive_indices: (0..b * positives).map(|i| (i + 1) % b).collect(),
    }
}

/// Times `steps` training steps after one warm-up step (compilation, autotune).
fn time_steps<B: sca_dist::TrackedSum>(case: &str, cfg: TrainConfig, b: usize, views: usize, size: usize, steps: usize, device: B::Device) -> anyhow::Result<serde_json::Value> {
    time_steps_on::<B>(case, cfg, b, views, size, steps, device, Replica::single())
}

/// [`time_steps`] as one replica of a group (global batch `b`, SyncBN): the row also gets
/// this replica's time, bytes and calls in collectives per step.
#[allow(clippy::too_many_arguments)]
fn time_steps_on<B: sca_dist::TrackedSum>(case: &str, cfg: TrainConfig, b: usize, views: usize, size: usize, steps: usize, device: B::Device, replica: Replica) -> anyhow::Result<serde_json::Value> {
    let p = if cfg.addon.enabled { cfg.addon.positives } else { 0 };
    let images = b * (views + p);
    let local = b / replica.world();
    let clusters = cfg.addon.clusters as u32;
    let train = sca_data::DatasetSpec::builtin().open()?.0;
    let mut trainer = Trainer::<B>::new(cfg, train, None, device.clone());
    trainer.distribute(replica.clone(), true)?;
    trainer.set_pseudo_labels((0..b as u32).map(|i| i % clusters).collect());
    let say = |msg: String| if replica.is_root() { eprintln!("{case}: {msg}") };
    say("warm-up step (compilation and autotuning; each phase is reported as it ends)".into());
    if replica.is_root() {
        let case = case.to_string();
        trainer.time_phases(Some(Box::new(move |phase, s| eprintln!("{case}: warm-up {phase} {s:.1} s"))));
    }
    let t0 = Instant::now();
    trainer.step_batch(random_batch::<B>(local, views, size, p, &device))?;
    B::sync(&device)?;
    let first = t0.elapsed().as_secs_f64();
    trainer.time_phases(None);
    // The batches are made first: making one (random images on the device, read back into
    // host memory as a loader would hand them over) is no part of a step. Uploading them is.
    let batches: Vec<TrainBatch> = (0..steps).map(|_| random_batch::<B>(local, views, size, p, &device)).collect();
    let (t0, comm0) = (Instant::now(), replica.comm_totals());
    for batch in batches {
        trainer.step_batch(batch)?;
    }
    B::sync(&device)?;
    let (n, comm) = (steps.max(1) as f64, replica.comm_totals() - comm0);
    let per_step = t0.elapsed().as_secs_f64() / n;
    say(format!("{:.1} ms/step", per_step * 1e3));
    let mut row = json!({ "case": case, "images_per_s": images as f64 / per_step, "ms_per_step": per_step * 1e3, "first_step_s": first, "batch": b, "images_per_step": images });
    // Where a warm step's time goes: two more steps with the device waited on after each
    // phase (kept out of the throughput above, which the waits would lower a little).
    if replica.is_single() && steps > 0 {
        let phase_steps = 2;
        // (phase, seconds summed), in the order the phases run.
        let sums = std::rc::Rc::new(std::cell::RefCell::new(Vec::<(String, f64)>::new()));
        let into = sums.clone();
        trainer.time_phases(Some(Box::new(move |phase, s| {
            let mut sums = into.borrow_mut();
            match sums.iter_mut().find(|(p, _)| p == phase) {
                Some((_, total)) => *total += s,
                None => sums.push((phase.to_string(), s)),
            }
        })));
        for batch in (0..phase_steps).map(|_| random_batch::<B>(local, views, size, p, &device)).collect::<Vec<_>>() {
            trainer.step_batch(batch)?;
        }
        trainer.time_phases(None);
        let phases: Vec<String> = sums.borrow().iter().map(|(phase, s)| {
            row[format!("{phase}_ms")] = json!(s * 1e3 / phase_steps as f64);
            format!("{phase} {:.1} ms", s * 1e3 / phase_steps as f64)
        }).collect();
        say(format!("phases of a warm step (device waited on after each): {}", phases.join(", ")));
    }
    if !replica.is_single() {
        row["comm_ms_per_step"] = json!(comm.seconds / n * 1e3);
        row["comm_share"] = json!(comm.seconds / n / per_step);
        row["comm_bytes_per_step"] = json!(comm.bytes as f64 / n);
        row["collectives_per_step"] = json!(comm.calls as f64 / n);
    }
    Ok(row)
}

fn pretrain<B: sca_dist::TrackedSum>(c: &Common, cuda: bool, device: B::Device) -> anyhow::Result<Vec<serde_json::Value>> {
    let b50 = c.batch.unwrap_or(if cuda { 64 } else { 16 });
    let r18 = config(&["model.arch=resnet18", "model.small_stem=true", "addon.enabled=false", "batch_size=32"])?;
    let r50 = config(&["model.arch=resnet50", "model.small_stem=false", "addon.enabled=false", "engine.hidden_dim=2048"])?;
    Ok(vec![
        time_steps::<B>("SwAV ResNet-18 small stem, 2x32 px, batch 32", r18, 32, 2, 32, c.steps, device.clone())?,
        time_steps::<B>(&format!("SwAV ResNet-50, 2x224 px, batch {b50}"), r50, b50, 2, 224, c.steps, device)?,
    ])
}

/// The add-on's own cost: a step with the add-on against an engine-only step that carries
/// the same images through the backbone (the positives as a third SwAV view).
fn addon<B: sca_dist::TrackedSum>(c: &Common, device: B::Device) -> anyhow::Result<Vec<serde_json::Value>> {
    let b = c.batch.unwrap_or(32);
    let bs = format!("batch_size={b}");
    let with = config(&[&bs, "addon.enabled=true", "addon.positives=1"])?;
    let same_images = config(&[&bs, "addon.enabled=false", "data.augment.crops=[{\"count\":3,\"size\":64,\"min_scale\":0.3,\"max_scale\":1.0}]"])?;
    let engine_only = config(&[&bs, "addon.enabled=false"])?;
    let a = time_steps::<B>(&format!("SwAV + add-on (P=1), ResNet-18 64 px, batch {b}"), with, b, 2, 64, c.steps, device.clone())?;
    let s = time_steps::<B>(&format!("SwAV, 3 views (same images), batch {b}"), same_images, b, 3, 64, c.steps, device.clone())?;
    let e = time_steps::<B>(&format!("SwAV, 2 views, batch {b}"), engine_only, b, 2, 64, c.steps, device)?;
    let (ta, ts) = (a["ms_per_step"].as_f64().unwrap(), s["ms_per_step"].as_f64().unwrap());
    let share = json!({ "case": format!("add-on's own share of its step: {:.1}%", 100.0 * (ta - ts) / ta), "ms_per_step": ta - ts });
    Ok(vec![a, s, e, share])
}

/// One replica, then `replicas` replicas (threads) on the same global batch.
fn distributed<B: sca_dist::TrackedSum>(c: &Common, replicas: usize, device: B::Device) -> anyhow::Result<Vec<serde_json::Value>> {
    let b = c.batch.unwrap_or(32);
    let cfg = config(&["model.arch=resnet18", "model.small_stem=true", &format!("batch_size={b}")])?;
    let one = time_steps::<B>(&format!("1 replica, global batch {b}"), cfg.clone(), b, 2, 32, c.steps, device.clone())?;
    sca_dist::group::reset();
    let spec = sca_dist::GroupSpec::local(replicas);
    let case = format!("{replicas} replicas, {} images each, SyncBN", b / replicas);
    let handles: Vec<_> = (0..replicas)
        .map(|i| {
            let (spec, cfg, device, steps, case) = (spec.clone(), cfg.clone(), device.clone(), c.steps, case.clone());
            std::thread::spawn(move || -> anyhow::Result<serde_json::Value> {
                let replica = sca_dist::join(&spec, i)?;
                time_steps_on::<B>(&case, cfg, b, 2, 32, steps, device, replica)
            })
        })
        .collect();
    let rows: Vec<serde_json::Value> = handles.into_iter().map(|h| h.join().expect("replica thread")).collect::<anyhow::Result<_>>()?;
    let r = &rows[0];
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let summary = json!({ "case": format!(
        "rank 0: {:.1} ms/step in collectives ({:.1}% of the step), {:.1} MB summed in {:.0} calls",
        f("comm_ms_per_step"), 100.0 * f("comm_share"), f("comm_bytes_per_step") / 1e6, f("collectives_per_step")
    ) });
    Ok(vec![one, r.clone(), summary])
}

/// What `bench gpu` runs.
struct GpuCases {
    scale: f64,
    size: usize,
    feature_batch: usize,
    conv: sca_backbone::ConvImpl,
    precision: sca_backbone::Precision,
    channels_last: bool,
    only: Vec<char>,
}

/// Everything the GPU comparison with `bench/torch_reference.py` needs, in one table.
fn gpu<B: sca_dist::TrackedSum>(c: &Common, cuda: bool, g: GpuCases, device_name: &str, device: B::Device) -> anyhow::Result<Vec<serde_json::Value>> {
    anyhow::ensure!(g.scale > 0.0, "--scale must be positive");
    if let Some(bad) = g.only.iter().find(|c| !('a'..='e').contains(c)) {
        anyhow::bail!("--only: unknown case '{bad}' (the cases are a, b, c, d, e)");
    }
    let b = c.batch.unwrap_or(if cuda { 64 } else { 4 });
    let (size, run) = (g.size, |case: char| g.only.contains(&case));
    let (conv, precision) = (format!("model.conv={}", g.conv), format!("precision={}", g.precision));
    let layout = format!("model.channels_last={}", g.channels_last);
    let r50 = ["model.arch=resnet50", "model.small_stem=false", "engine.hidden_dim=2048", "engine.prototypes=3000", &conv, &precision, &layout];
    let tag = format!("{} conv, {}{}", g.conv, g.precision, if g.channels_last { ", channels-last" } else { "" });
    let mut rows = Rows { rows: Vec::new(), json: c.json.as_deref(), device_name };
    if run('a') {
        let swav = config(&[&r50[..], &["addon.enabled=false"]].concat())?;
        rows.push(time_steps::<B>(&format!("(a) SwAV ResNet-50, 2x{size} px, batch {b}, {tag}"), swav, b, 2, size, c.steps, device.clone())?)?;
    }
    if run('b') {
        let addon = config(&[&r50[..], &["addon.enabled=true", "addon.positives=1", "addon.clusters=3000"]].concat())?;
        rows.push(time_steps::<B>(&format!("(b) SwAV + add-on (P=1) ResNet-50, batch {b}, {tag}"), addon, b, 2, size, c.steps, device.clone())?)?;
    }
    if run('c') {
        sca_kernels::layout::set_channels_last(g.channels_last);
        rows.push(features::<B>(g.feature_batch, size, c.steps, &tag, g.conv, g.precision, device.clone())?)?;
    }
    let n = ((1_280_000.0 * g.scale).round() as usize).max(1);
    if run('d') {
        for mut row in kmeans::<B>(n, 128, 3000.min(n), 10, device.clone())? {
            row["case"] = json!(format!("(d) {}", row["case"].as_str().unwrap_or("k-means")));
            rows.push(row)?;
        }
    }
    if run('e') {
        rows.push(knn_bench::<B>(((50_000.0 * g.scale).round() as usize).max(1), n, 2048, device)?)?;
    }
    Ok(rows.rows)
}

/// The finished cases of one `bench gpu` run, printed and on record in `--json` as each
/// ends: a later case that runs past the session's time limit, or fails, must not take the
/// earlier figures with it.
struct Rows<'a> {
    rows: Vec<serde_json::Value>,
    json: Option<&'a Path>,
    device_name: &'a str,
}

impl Rows<'_> {
    fn push(&mut self, row: serde_json::Value) -> anyhow::Result<()> {
        eprintln!("done: {row}");
        self.rows.push(row);
        match self.json {
            Some(path) => write_rows(path, self.device_name, &self.rows),
            None => Ok(()),
        }
    }
}

/// Forward-only pooled ResNet-50 features (no autodiff, inference-mode BN).
fn features<B: AutodiffBackend>(
    batch: usize,
    size: usize,
    steps: usize,
    tag: &str,
    conv: sca_backbone::ConvImpl,
    precision: sca_backbone::Precision,
    device: B::Device,
) -> anyhow::Result<serde_json::Value> {
    type I<B> = <B as AutodiffBackend>::InnerBackend;
    let model: sca_backbone::ResNet<I<B>> = sca_backbone::ResNetConfig::new(sca_backbone::Arch::ResNet50)
        .with_conv_impl(conv)
        .with_precision(precision)
        .init(&device);
    let x = || Tensor::<I<B>, 4>::random([batch, 3, size, size], Distribution::Normal(0.0, 1.0), &device);
    let t0 = Instant::now();
    let _ = model.forward_features(x()).into_data();
    let first = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for _ in 0..steps {
        let _ = model.forward_features(x()).into_data();
    }
    let per = t0.elapsed().as_secs_f64() / steps.max(1) as f64;
    Ok(json!({
        "case": format!("(c) ResNet-50 features, batch {batch} at {size} px, {tag}"),
        "images_per_s": batch as f64 / per, "ms_per_step": per * 1e3, "first_step_s": first, "batch": batch,
    }))
}

/// Chunked weighted KNN on random unit vectors (`queries × bank × d`, k = 200).
fn knn_bench<B: AutodiffBackend>(queries: usize, bank: usize, d: usize, device: B::Device) -> anyhow::Result<serde_json::Value> {
    type I<B> = <B as AutodiffBackend>::InnerBackend;
    I::<B>::seed(&device, 1);
    let unit = |n| sca_eval::knn::l2_normalize(Tensor::<I<B>, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &device));
    let (bank_t, query_t) = (unit(bank), unit(queries));
    let (bank_labels, query_labels): (Vec<usize>, Vec<usize>) = ((0..bank).map(|i| i % 1000).collect(), (0..queries).map(|i| i % 1000).collect());
    I::<B>::sync(&device)?;
    let t0 = Instant::now();
    let r = sca_eval::weighted_knn(&bank_t, &bank_labels, &query_t, &query_labels, 1000, 200, 0.1, 4096);
    let s = t0.elapsed().as_secs_f64();
    Ok(json!({
        "case": format!("(e) KNN {queries} x {bank} x {d}, k=200 (top-1 {:.1}% on noise)", r.top1),
        "seconds": s, "images_per_s": queries as f64 / s, "ms_per_step": s * 1e3,
    }))
}

fn kmeans<B: AutodiffBackend>(n: usize, d: usize, c: usize, iterations: usize, device: B::Device) -> anyhow::Result<Vec<serde_json::Value>> {
    type I<B> = <B as AutodiffBackend>::InnerBackend;
    I::<B>::seed(&device, 0);
    let z = Tensor::<I<B>, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
    let z = sca_cluster::bank::l2_normalize(z);
    I::<B>::sync(&device)?;
    let cfg = sca_cluster::kmeans::KMeansConfig::new(c).with_iterations(iterations).with_seed(0);
    let t0 = Instant::now();
    let r = sca_cluster::kmeans::kmeans(&z, &cfg)?;
    I::<B>::sync(&device)?;
    let s = t0.elapsed().as_secs_f64();
    Ok(vec![json!({
        "case": format!("k-means N={n} d={d} C={c}, {} iterations (k-means++)", r.iterations_run),
        "seconds": s, "ms_per_step": 1e3 * s / r.iterations_run.max(1) as f64,
    })])
}
