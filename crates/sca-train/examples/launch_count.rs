//! Kernel launches per ResNet-50 SwAV training step on a CubeCL runtime, by kernel and phase,
//! and what a cold first step compiles and autotunes.
//!
//! On a GPU each launch costs a few microseconds of host time however small the kernel, and
//! PyTorch trains this step in ~128 ms (H200, fp32), so the launch count is a figure of its
//! own. It does not depend on the image size or the card, so this counts it on wgpu over
//! Mesa's software Vulkan (lavapipe), at 32 px, with CubeCL's execution log (profiling level
//! "minimal": every launch named, nothing timed). The step is the CUDA one: convolutions and
//! matmuls on the explicit kernels (the `matmul` convolution kernel, as lavapipe has no
//! cooperative-matrix unit for cubek's implicit-GEMM ones), batch norm and LARS on theirs.
//!
//!   cargo run --release -p sca-train --example launch_count [-- ARCH [BATCH [channels-last]]]
//!
//! `channels-last` counts the step with `model.channels_last` (activations kept NHWC).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use cubecl_runtime::config::autotune::AutotuneLogLevel;
use cubecl_runtime::config::cache::CacheConfig;
use cubecl_runtime::config::compilation::CompilationLogLevel;
use cubecl_runtime::config::profiling::ProfilingLogLevel;
use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};
use sca_data::{ImageBatch, TrainBatch};
use sca_kernels::plan::{use_plan, ConvPlan};
use sca_kernels::WgpuBackend;
use sca_train::Trainer;

type Gpu = Autodiff<WgpuBackend>;

const DEFAULT: &str = include_str!("../../../configs/default.json");
const SIZE: usize = 32;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arch = args.first().map_or("resnet50", String::as_str).to_string();
    let batch: usize = args.get(1).map_or(4, |b| b.parse().expect("BATCH: a number"));
    let channels_last = match args.get(2).map(String::as_str) {
        None => false,
        Some("channels-last") => true,
        Some(other) => panic!("the third argument is `channels-last` or nothing, not `{other}`"),
    };
    let log = std::env::temp_dir().join(format!("sca-launches-{}.log", std::process::id()));
    let mut c = CubeClRuntimeConfig::default();
    c.profiling.logger.level = ProfilingLogLevel::Minimal;
    c.profiling.logger.file = Some(log.clone());
    let compile_log = log.with_extension("compile.log");
    c.compilation.logger.level = CompilationLogLevel::Basic;
    c.compilation.logger.file = Some(compile_log.clone());
    let tune_log = log.with_extension("tune.log");
    c.autotune.logger.level = AutotuneLogLevel::Full;
    c.autotune.logger.file = Some(tune_log.clone());
    let tune_cache = log.with_extension("autotune");
    c.autotune.cache = CacheConfig::File(tune_cache.clone());
    CubeClRuntimeConfig::set(c);

    let Some(device) = sca_kernels::cubecl_test_device::<WgpuBackend>() else { std::process::exit(1) };
    let all = r#"{"forward": "matmul", "data": "matmul", "weight": "matmul"}"#;
    use_plan(ConvPlan::parse(&format!(r#"{{"device": "lavapipe", "batch": {batch}, "default": {all}, "shapes": {{}}}}"#)).unwrap());
    let o: Vec<String> = [
        format!("model.arch={arch}"), "model.small_stem=false".into(), "model.conv=gemm".into(), "addon.enabled=false".into(),
        "engine.hidden_dim=2048".into(), format!("batch_size={batch}"), format!("data.image_size={SIZE}"),
        format!("model.channels_last={channels_last}"),
    ]
    .into();
    let cfg = sca_train::config::parse(DEFAULT, "default.json", &o).unwrap();
    let train = sca_data::DatasetSpec::builtin().open().unwrap().0;
    let mut trainer = Trainer::<Gpu>::new(cfg, train, None, device.clone());

    // Phase ends, as line counts of the execution log (each follows a device wait).
    let marks = Arc::new(Mutex::new(Vec::<(String, usize)>::new()));
    let (into, path) = (marks.clone(), log.clone());
    // (The host's own times, `*_host`, end no span: the device was not waited on.)
    trainer.time_phases(Some(Box::new(move |phase, _| {
        if !phase.ends_with("_host") {
            into.lock().unwrap().push((phase.to_string(), settled_lines(&path)));
        }
    })));
    trainer.step_batch(random_batch(batch)).unwrap(); // warm-up: first-use launches (weights' copies, buffers)
    Gpu::sync(&device).unwrap();
    // What a cold start pays for before the first step ends (model set-up included):
    // every kernel compiled once, every autotuned operation's candidates timed.
    let compiled = settled_log(&compile_log);
    let tuned = settled_log(&tune_log);
    let start = settled_lines(&log);
    marks.lock().unwrap().clear();
    trainer.step_batch(random_batch(batch)).unwrap();
    Gpu::sync(&device).unwrap();
    let lines = settled_log(&log);
    let end = lines.len();
    // The phases' spans, and what follows the last one ("rest").
    let mut phases: Vec<(String, usize)> = marks.lock().unwrap().clone();
    phases.push(("rest".into(), end));
    let mut from = start;
    let mut table: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, (_, to)) in phases.iter().enumerate() {
        for l in &lines[from..*to] {
            let name = l.strip_prefix("Executing ").unwrap_or(l);
            table.entry(short(name)).or_insert_with(|| vec![0; phases.len()])[i] += 1;
        }
        from = *to;
    }
    let mut rows: Vec<(String, Vec<usize>)> = table.into_iter().collect();
    rows.sort_by_key(|(_, n)| std::cmp::Reverse(n.iter().sum::<usize>()));
    let heads: Vec<&str> = phases.iter().map(|(p, _)| p.as_str()).collect();
    let layout = if channels_last { ", channels-last" } else { "" };
    println!("kernel launches in one warm SwAV step, {arch}, batch {batch}, 2 crops at {SIZE} px{layout}, wgpu");
    println!("{:>7} {} kernel", "total", heads.iter().map(|h| format!("{h:>9}")).collect::<String>());
    for (name, n) in &rows {
        println!("{:>7} {} {name}", n.iter().sum::<usize>(), n.iter().map(|v| format!("{v:>9}")).collect::<String>());
    }
    let totals: Vec<usize> = (0..heads.len()).map(|i| rows.iter().map(|(_, n)| n[i]).sum()).collect();
    println!("{:>7} {} all", end - start, totals.iter().map(|v| format!("{v:>9}")).collect::<String>());
    print_cold_start(&compiled, &tuned);
    if std::env::var_os("SCA_KEEP_LOG").is_some() {
        eprintln!("execution log: {} (lines {start}..{end} are the counted step)", log.display());
        eprintln!("compilation and autotune logs: {}, {}", compile_log.display(), tune_log.display());
    } else {
        for f in [&log, &compile_log, &tune_log] {
            let _ = std::fs::remove_file(f);
        }
    }
    let _ = std::fs::remove_dir_all(&tune_cache);
}

/// Kernels compiled and autotune keys tuned up to the end of the first step, with empty
/// caches: what the cold start compiles (on CUDA with NVRTC) besides the convolutions'
/// kernels, which differ there (cubek's implicit GEMM instead of the `matmul` kernel).
fn print_cold_start(compiled: &[String], tuned: &[String]) {
    let mut by_crate: BTreeMap<String, usize> = BTreeMap::new();
    for l in compiled.iter().filter_map(|l| l.strip_prefix("[Compiling kernel] ")) {
        *by_crate.entry(l.split("::").next().unwrap_or(l).to_string()).or_default() += 1;
    }
    let mut by_crate: Vec<(String, usize)> = by_crate.into_iter().collect();
    by_crate.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let total: usize = by_crate.iter().map(|(_, n)| n).sum();
    let keys = tuned.iter().filter(|l| l.starts_with("Fastest result")).count();
    let timed = tuned.iter().filter(|l| l.starts_with("Autotune[")).count();
    println!("\nfirst step with empty caches (model set-up included): {total} kernels compiled, {keys} autotuned operations ({timed} candidates timed)");
    for (krate, n) in by_crate {
        println!("{n:>7} {krate}");
    }
}

/// The log's lines once the asynchronous logger has caught up.
fn settled_log(path: &Path) -> Vec<String> {
    let n = settled_lines(path);
    std::fs::read_to_string(path).unwrap_or_default().lines().take(n).map(str::to_string).collect()
}

/// The log's line count once the asynchronous logger has caught up.
fn settled_lines(path: &Path) -> usize {
    let count = || std::fs::read_to_string(path).map_or(0, |s| s.lines().count());
    let mut n = count();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let m = count();
        if m == n {
            return n;
        }
        n = m;
    }
}

/// The kernel's type name without its module path.
fn short(name: &str) -> String {
    let base = name.split('<').next().unwrap_or(name);
    base.rsplit("::").next().unwrap_or(base).trim().to_string()
}

fn random_batch(b: usize) -> TrainBatch {
    let image = |seed: usize| ImageBatch {
        data: (0..b * 3 * SIZE * SIZE).map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0) - 1.0).collect(),
        shape: [b, 3, SIZE, SIZE],
    };
    TrainBatch { indices: (0..b).collect(), labels: vec![0; b], crops: vec![image(1), image(2)], positives: None, positive_indices: vec![] }
}
