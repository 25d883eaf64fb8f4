//! `sca bench convs`: every convolution shape of a ResNet, each pass (forward, data gradient,
//! weight gradient) on each candidate kernel, timed alone; then the fastest kernel per shape
//! and pass written as a convolution plan (`sca_kernels::plan`), which later CUDA runs use.
//!
//! This is the per-layer profile of the convolutions (where a step's time goes, and which
//! layers a kernel handles badly) and the one-time tuning in one: the plan lands beside the
//! compiled kernels in the GPU cache directory, so a run compiles only the kernels it uses.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::tensor::backend::{AutodiffBackend, Backend};
use anyhow::Context;
use burn::tensor::{DType, Distribution, ElementConversion, FloatDType, Tensor};
use sca_backbone::{Arch, ConvLayer, Precision, ResNetConfig};
use sca_kernels::conv::{conv_kernel_names, conv_pass_on, conv_shape};
use sca_kernels::plan::{ConvKernel, ConvPlan, ConvShape, Pass, Timing};
use serde_json::json;

use crate::files;

#[derive(clap::Args, Clone)]
pub struct ConvsArgs {
    /// Network whose convolutions are measured.
    #[arg(long, default_value = "resnet50")]
    pub arch: Arch,
    /// Input side in pixels.
    #[arg(long, default_value_t = 224, value_parser = crate::cmd::bench::at_least_one)]
    pub size: usize,
    /// The small-image stem (3×3, no max pool).
    #[arg(long)]
    pub small_stem: bool,
    /// Arithmetic of the convolutions: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Kernels to compare: names (see `sca_kernels::plan::ConvKernel`), or `all`; default:
    /// on CUDA burn-cubecl's six, two warp-specialised and `matmul` (im2col + matmul); on
    /// the CPU the backend's own and `matmul`.
    #[arg(long, value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// Passes to measure.
    #[arg(long, value_delimiter = ',', default_value = "forward,data,weight")]
    pub passes: Vec<Pass>,
    /// Where the plan goes (CUDA only; default: `conv-plan.json` in the GPU cache directory,
    /// where later runs find it).
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// Go on from the rows already in the `--json` file, after a run that crashed or ran out
    /// of time: what they measured or saw refused is kept and not run again, and the kernel
    /// that was running when that run ended counts as refusing its shape.
    #[arg(long)]
    pub resume: bool,
    /// Seconds one kernel may spend on one shape and pass (its compiling first call and the
    /// timed ones) before the run ends with it on record as refusing the shape, so that a
    /// kernel that hangs or compiles for minutes does not eat the session (`--resume` goes
    /// on without it).
    #[arg(long, default_value_t = 120.0)]
    pub kernel_timeout: f64,
    /// Measure with channels-last activations (the default), as `model.channels_last`
    /// trains: inputs and output gradients in NHWC memory (the stem's input, the images,
    /// stays NCHW), results left channels-last, no layout copies timed; the plan's keys end
    /// in ` nhwc`.
    #[arg(long)]
    pub channels_last: bool,
    /// Measure with NCHW activations instead (`model.channels_last=false`): a cubek kernel's
    /// time then includes the copies to and from channels-last.
    #[arg(long, conflicts_with = "channels_last")]
    pub nchw: bool,
}

impl ConvsArgs {
    /// Whether the activations are channels-last: unless `--nchw`.
    pub fn channels_last(&self) -> bool {
        !self.nchw
    }
}

/// What a candidate's row says while it runs; a run that ends there leaves it on record.
const ENDED_WHILE_RUNNING: &str = "the run ended while this kernel ran (a crash, or the time limit)";

/// One distinct convolution and the layers that have its shape.
struct Problem {
    layer: ConvLayer,
    shape: ConvShape,
    names: Vec<String>,
}

/// The network's convolutions grouped by shape, in the order a forward pass meets them.
fn problems(args: &ConvsArgs, dtype: DType) -> Vec<Problem> {
    type Cpu = burn::backend::Flex;
    let model = ResNetConfig::new(args.arch).with_small_stem(args.small_stem).init::<Cpu>(&Default::default());
    let mut out: Vec<Problem> = Vec::new();
    for layer in model.conv_layers([args.size, args.size]) {
        let [c, h, w] = layer.input;
        let shape = conv_shape(&[1, c, h, w].into(), &layer.weight.into(), &layer.options, dtype);
        match out.iter_mut().find(|p| p.shape == shape) {
            Some(p) => p.names.push(layer.name),
            None => out.push(Problem { names: vec![layer.name.clone()], layer, shape }),
        }
    }
    out
}

/// Runs the benchmark: prints the tables, writes the rows (`--json`) and, on CUDA, the plan.
pub fn convs<B: AutodiffBackend>(args: &ConvsArgs, batch: usize, steps: usize, device_name: &str, json_path: Option<&PathBuf>, device: B::Device) -> anyhow::Result<()> {
    type I<B> = <B as AutodiffBackend>::InnerBackend;
    let compute = args.precision.compute_dtype();
    // Before the shapes are made: their keys carry the layout.
    sca_kernels::layout::set_channels_last(args.channels_last());
    let kernels = choose_kernels::<I<B>>(&args.kernels)?;
    let problems = problems(args, compute.map(DType::from).unwrap_or(DType::F32));
    let plan_path = plan_destination::<I<B>>(args)?;
    // Entries of an existing plan that this run does not re-measure (another precision,
    // another network) are kept.
    let older = match plan_path.as_ref().filter(|p| p.exists()) {
        Some(p) => ConvPlan::load(p).map_err(|e| anyhow::anyhow!("{e} (move it away to start a new plan)"))?,
        None => ConvPlan::default(),
    };
    eprintln!(
        "{} convolutions of {} at {} px in {} shapes; {} passes × {} kernels each, batch {batch}, {steps} timed runs after one warm-up (which compiles); activations {}",
        problems.iter().map(|p| p.names.len()).sum::<usize>(),
        args.arch,
        args.size,
        problems.len(),
        args.passes.len(),
        kernels.len(),
        if args.channels_last() { "channels-last (NHWC)" } else { "NCHW" }
    );
    anyhow::ensure!(args.kernel_timeout > 0.0, "--kernel-timeout must be positive seconds, not {}", args.kernel_timeout);
    let rows = if args.resume { earlier_rows(json_path, device_name, batch)? } else { Vec::new() };
    let mut run = Measurement::<I<B>> {
        timings: rows.iter().filter_map(timing).collect(),
        rows,
        device_name,
        json_path,
        batch,
        steps,
        watchdog: Watchdog::start(Duration::from_secs_f64(args.kernel_timeout), resume_hint(json_path)),
        device,
    };
    // Heaviest first (multiply-adds × layers): a run its time limit cuts short has measured
    // the layers that weigh most in a step. The tables keep the network's order.
    let weight = |p: &Problem| p.shape.macs(1) * p.names.len() as f64;
    let mut order: Vec<&Problem> = problems.iter().collect();
    order.sort_by(|a, b| weight(b).total_cmp(&weight(a)));
    let rounds = rounds(&kernels);
    let t_start = Instant::now();
    // Units of (shape, kernel): all passed so far, and those this run measured (a resumed
    // run passes over the ones its rows hold in no time; the ETA is from the others).
    let (mut units_done, mut units_measured) = (0, 0);
    for (r, round) in rounds.iter().enumerate() {
        for (i, p) in order.iter().enumerate() {
            if run.shape(p, round, &args.passes, compute)? {
                units_measured += round.len();
            }
            units_done += round.len();
            let done = t_start.elapsed().as_secs_f64();
            let left = match units_measured {
                0 => "nothing measured yet".to_string(),
                m => format!("about {:.0} s left", done / m as f64 * (kernels.len() * problems.len() - units_done) as f64),
            };
            let round = if rounds.len() > 1 { format!("round {}/{} ({}): ", r + 1, rounds.len(), round.join(", ")) } else { String::new() };
            eprintln!("{round}[{}/{}] {} ({} layers) measured; {:.0} s so far, {left}", i + 1, problems.len(), p.shape, p.names.len(), done);
            // Written as the run goes: a session that runs out of time keeps what it measured.
            save_rows(json_path, device_name, &run.rows)?;
            if let Some(path) = &plan_path {
                let plan = ConvPlan::fastest(&run.timings, device_name, batch).over(older.clone());
                files::write_atomic(path, serde_json::to_string_pretty(&plan)?.as_bytes())?;
            }
        }
    }
    let rows = run.rows;
    print_tables(&problems, &rows, &kernels, &args.passes);
    if let Some(path) = &plan_path {
        eprintln!("plan written to {} (later CUDA runs with this GPU cache use it)", path.display());
    }
    Ok(())
}

/// How to go on after the run ends early.
fn resume_hint(json_path: Option<&PathBuf>) -> String {
    match json_path {
        Some(path) => format!("rerun with --resume to go on from the rows in {} without it", path.display()),
        None => "with --json FILE, --resume goes on from where a run stopped".to_string(),
    }
}

/// Ends the process when the kernel being measured runs past its time. A stuck GPU call
/// cannot be interrupted from inside the process; its row is already on record as the one
/// running, which a resumed run counts as refusing.
struct Watchdog {
    running: Arc<Mutex<Option<(Instant, String)>>>,
}

impl Watchdog {
    fn start(limit: Duration, hint: String) -> Watchdog {
        let running: Arc<Mutex<Option<(Instant, String)>>> = Arc::default();
        let watched = running.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep((limit / 4).min(Duration::from_secs(1)));
            if let Some((start, what)) = &*watched.lock().unwrap_or_else(|p| p.into_inner()) {
                if start.elapsed() > limit {
                    eprintln!("error: {what} ran past --kernel-timeout ({:.1} s): ending the run with it on record as refusing that shape; {hint}", limit.as_secs_f64());
                    // Without exit handlers: the GPU driver's could wait on the stuck call.
                    // SAFETY: ends the process at once; the rows file is written atomically.
                    unsafe { libc::_exit(3) };
                }
            }
        });
        Watchdog { running }
    }

    fn arm(&self, what: String) {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), what));
    }

    fn disarm(&self) {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The rows file (`--json`), rewritten whole each time (a few hundred rows at most).
fn save_rows(json_path: Option<&PathBuf>, device_name: &str, rows: &[serde_json::Value]) -> anyhow::Result<()> {
    if let Some(path) = json_path {
        let doc = json!({ "device": device_name, "rows": rows });
        files::write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    }
    Ok(())
}

/// The rows of the run `--resume` goes on from (none if its file is not there yet), which
/// must have measured the same device at the same batch.
fn earlier_rows(json_path: Option<&PathBuf>, device_name: &str, batch: usize) -> anyhow::Result<Vec<serde_json::Value>> {
    let path = json_path.context("--resume goes on from the rows of an earlier run: name their file with --json")?;
    if !path.exists() {
        eprintln!("note: --resume: {} does not exist yet; starting from the beginning", path.display());
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("--resume: reading {}", path.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("--resume: {} is not JSON (truncated?)", path.display()))?;
    let rows = doc["rows"].as_array().with_context(|| format!("--resume: {} has no \"rows\" list: not written by `sca bench convs`", path.display()))?;
    anyhow::ensure!(doc["device"] == device_name, "--resume: the rows in {} were measured on {}, this run is on {device_name}", path.display(), doc["device"]);
    if let Some(other) = rows.iter().find(|r| r["batch"] != batch) {
        anyhow::bail!("--resume: the rows in {} were measured at batch {}, this run's batch is {batch}", path.display(), other["batch"]);
    }
    let ended = rows.iter().filter(|r| r["refused"] == ENDED_WHILE_RUNNING).count();
    eprintln!("resuming from {}: {} rows kept ({ended} of them the kernel running when that run ended, now counted as refusing)", path.display(), rows.len());
    Ok(rows.clone())
}

/// A row's measurement as the plan takes it (none for refusals and for the CPU's `flex`).
fn timing(row: &serde_json::Value) -> Option<Timing> {
    Some(Timing {
        shape: row["shape"].as_str()?.to_string(),
        pass: row["pass"].as_str()?.parse().ok()?,
        kernel: row["kernel"].as_str()?.parse().ok()?,
        ms: row["ms"].as_f64()?,
    })
}

/// Whether the device still computes (after a kernel panicked).
fn device_works<B: Backend>(device: &B::Device) -> bool {
    let sum = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Tensor::<B, 1>::from_floats([1.0, 2.0], device).sum().into_scalar().elem::<f32>()));
    sum.is_ok_and(|s| s == 3.0)
}

/// The kernels in the order they are measured: first, on every shape, the CUDA backend's
/// built-in kernel and `matmul` (the whole network's per-layer profile on what runs without a
/// plan, and on this project's own kernel), then the others; each round heaviest shape first.
fn rounds(kernels: &[String]) -> Vec<Vec<String>> {
    let first = [ConvKernel::DEFAULT.to_string(), ConvKernel::Matmul.to_string()];
    let (first, rest): (Vec<String>, Vec<String>) = kernels.iter().cloned().partition(|k| first.contains(k));
    [first, rest].into_iter().filter(|round| !round.is_empty()).collect()
}

/// One benchmark run's state: the rows so far (on record in `--json` as they change) and the
/// measurements the plan is made of.
struct Measurement<'a, B: Backend> {
    rows: Vec<serde_json::Value>,
    timings: Vec<Timing>,
    device_name: &'a str,
    json_path: Option<&'a PathBuf>,
    batch: usize,
    steps: usize,
    watchdog: Watchdog,
    device: B::Device,
}

impl<B: Backend> Measurement<'_, B> {
    /// Every pass of one shape on each of `kernels`, skipping what the rows already hold;
    /// whether anything was left to measure.
    fn shape(&mut self, p: &Problem, kernels: &[String], passes: &[Pass], compute: Option<FloatDType>) -> anyhow::Result<bool> {
        let key = p.shape.to_string();
        // The stem's input is the images: NCHW, and training never needs its gradient.
        let stem = p.names.iter().any(|n| n == "conv1");
        let held = |pass: Pass, kernel: &String| self.rows.iter().any(|r| r["shape"] == key && r["pass"] == json!(pass) && r["kernel"] == kernel.as_str());
        let todo: Vec<(Pass, &String)> = passes
            .iter()
            .filter(|&&pass| !(pass == Pass::Data && stem))
            .flat_map(|&pass| kernels.iter().map(move |kernel| (pass, kernel)))
            // Measured (or refused) by the run this one resumes.
            .filter(|&(pass, kernel)| !held(pass, kernel))
            .collect();
        if todo.is_empty() {
            return Ok(false);
        }
        let (batch, device) = (self.batch, self.device.clone());
        let [c, h, w] = p.layer.input;
        let [o, oh, ow] = p.layer.output();
        let cast = |t: Tensor<B, 4>| match compute {
            Some(d) => t.cast(d),
            None => t,
        };
        // In the memory order training hands the convolution: with channels-last
        // activations NCHW views of NHWC memory, but for the stem's input (the images).
        let activation = |[b, c, h, w]: [usize; 4], stem_input: bool| {
            if sca_kernels::layout::channels_last() && !stem_input {
                cast(Tensor::<B, 4>::random([b, h, w, c], Distribution::Normal(0.0, 1.0), &device)).permute([0, 3, 1, 2])
            } else {
                cast(Tensor::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device))
            }
        };
        let x = activation([batch, c, h, w], stem);
        // Weights at about their Kaiming scale; the values do not change the timings.
        let weight = cast(Tensor::random(p.layer.weight, Distribution::Normal(0.0, 0.05), &device));
        let grad = activation([batch, o, oh, ow], false);
        for (pass, kernel) in todo {
            // On record before it runs: if it takes the process down, a resumed run skips it.
            self.rows.push(json!({ "shape": key, "layers": p.names, "pass": pass, "kernel": kernel, "batch": batch, "refused": ENDED_WHILE_RUNNING }));
            save_rows(self.json_path, self.device_name, &self.rows)?;
            let run = || conv_pass_on(kernel, pass, x.clone(), weight.clone(), grad.clone(), p.layer.options.clone());
            self.watchdog.arm(format!("{kernel} on the {pass} pass of {key}"));
            let (result, first_s, ms) = time_kernel::<B>(run, self.steps, &device)?;
            self.watchdog.disarm();
            let row = self.rows.last_mut().expect("pushed above");
            row["first_s"] = json!(first_s);
            match result {
                Ok(()) => {
                    row.as_object_mut().expect("an object").remove("refused");
                    row["ms"] = json!(ms);
                    row["tflops"] = json!(2.0 * p.shape.macs(batch) / (ms * 1e-3) / 1e12);
                    self.timings.extend(timing(row));
                }
                // A panic inside a GPU runtime's server can leave the device unusable for
                // the rest of the process: every later kernel would then look refused.
                Err(why) if why.starts_with("panicked") && !device_works::<B>(&device) => {
                    row["refused"] = json!(format!("{why} (and the device stopped working after it)"));
                    save_rows(self.json_path, self.device_name, &self.rows)?;
                    anyhow::bail!("the device stopped working after {kernel} ran the {pass} pass of {key} ({why}); {}", resume_hint(self.json_path));
                }
                Err(why) => row["refused"] = json!(why),
            }
        }
        Ok(true)
    }
}

/// The kernels to compare: the named ones, all, or the default candidates.
fn choose_kernels<B: Backend>(asked: &[String]) -> anyhow::Result<Vec<String>> {
    let available = conv_kernel_names::<B>(true);
    anyhow::ensure!(!available.is_empty(), "this backend has no convolution kernels to compare");
    if asked.is_empty() {
        return Ok(conv_kernel_names::<B>(false));
    }
    if asked.len() == 1 && asked[0] == "all" {
        return Ok(available);
    }
    for k in asked {
        anyhow::ensure!(available.contains(k), "--kernels: no kernel '{k}' on this backend (it has: {})", available.join(", "));
    }
    Ok(asked.to_vec())
}

/// Where the plan is written: CUDA only (plans steer the CUDA backend's kernels alone).
fn plan_destination<B: Backend>(args: &ConvsArgs) -> anyhow::Result<Option<PathBuf>> {
    if !sca_kernels::on_cuda::<B>() {
        if args.plan.is_some() {
            eprintln!("note: no plan written: plans steer only the CUDA backend's kernels (--plan ignored)");
        }
        return Ok(None);
    }
    Ok(Some(args.plan.clone().unwrap_or_else(|| crate::gpu_cache::requested().cache.join(crate::gpu_cache::PLAN_FILE))))
}

/// One warm-up call (compilation included), then `steps` timed calls; the result says
/// whether the kernel took the shape. A kernel that panics while being set up counts as
/// refusing it, so one bad candidate does not end the measurement of the others.
fn time_kernel<B: Backend>(run: impl Fn() -> Result<Tensor<B, 4>, String>, steps: usize, device: &B::Device) -> anyhow::Result<(Result<(), String>, f64, f64)> {
    let t0 = Instant::now();
    let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run()?;
        B::sync(device).map_err(|e| format!("{e:?}"))
    }));
    match first {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return Ok((Err(why), 0.0, 0.0)),
        Err(panic) => {
            let why = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            return Ok((Err(format!("panicked: {}", why.unwrap_or_default())), 0.0, 0.0));
        }
    }
    let first = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for _ in 0..steps.max(1) {
        run().map_err(anyhow::Error::msg)?;
    }
    B::sync(device)?;
    Ok((Ok(()), first, t0.elapsed().as_secs_f64() * 1e3 / steps.max(1) as f64))
}

/// Per shape and pass, each kernel's milliseconds (the fastest marked `*`); then per
/// kernel, the time of one network pass (each shape's time × its layer count).
fn print_tables(problems: &[Problem], rows: &[serde_json::Value], kernels: &[String], passes: &[Pass]) {
    // A kernel's row for a shape and pass: none where the pass was not run; no "ms" where
    // the kernel refused it.
    let row_of = |shape: &str, pass: Pass, kernel: &str| rows.iter().find(|r| r["shape"] == shape && r["pass"] == json!(pass) && r["kernel"] == kernel);
    let short: Vec<String> = kernels.iter().map(|k| abbreviate(k)).collect();
    println!("\nmilliseconds per call (* fastest; - refused)");
    println!("{:<44} {:>3} {:<7} {}", "shape", "n", "pass", short.iter().map(|k| format!("{k:>9}")).collect::<String>());
    let mut totals: BTreeMap<(Pass, usize), (f64, usize)> = BTreeMap::new();
    let mut best_total: BTreeMap<Pass, f64> = BTreeMap::new();
    for p in problems {
        let key = p.shape.to_string();
        let n = p.names.len();
        for &pass in passes {
            let ran: Vec<Option<&serde_json::Value>> = kernels.iter().map(|k| row_of(&key, pass, k)).collect();
            if ran.iter().all(Option::is_none) {
                continue;
            }
            let times: Vec<Option<f64>> = ran.iter().map(|r| r.and_then(|r| r["ms"].as_f64())).collect();
            let best = times.iter().flatten().copied().fold(f64::INFINITY, f64::min);
            if best.is_finite() {
                *best_total.entry(pass).or_default() += best * n as f64;
            }
            let cells: String = times
                .iter()
                .map(|t| match t {
                    Some(ms) => format!("{:>8.3}{}", ms, if *ms == best { '*' } else { ' ' }),
                    None => format!("{:>9}", "-"),
                })
                .collect();
            println!("{:<44} {:>3} {:<7} {cells}", key, n, pass.name());
            for (i, t) in times.iter().enumerate() {
                let e = totals.entry((pass, i)).or_default();
                match t {
                    Some(ms) => e.0 += ms * n as f64,
                    None => e.1 += n,
                }
            }
        }
    }
    // First calls: compilation (unless the kernel cache had it) plus one call, per shape
    // and pass: about what a cold step on that kernel alone would spend compiling.
    let first_calls = |kernel: &str| -> f64 {
        rows.iter().filter(|r| r["kernel"] == kernel && r["ms"].is_number()).filter_map(|r| r["first_s"].as_f64()).fold(0.0, |a, b| a + b)
    };
    println!("\none network pass, ms (layers × ms; refused layers not counted, their number after '+'); first calls, s");
    println!("{:<28} {}{:>14}", "kernel", passes.iter().map(|p| format!("{:>16}", p.name())).collect::<String>(), "first calls");
    for (i, k) in kernels.iter().enumerate() {
        let cells: String = passes
            .iter()
            .map(|&p| {
                let (ms, refused) = totals.get(&(p, i)).copied().unwrap_or_default();
                if refused > 0 {
                    format!("{:>11.1} +{:<3}", ms, refused)
                } else {
                    format!("{ms:>16.1}")
                }
            })
            .collect();
        println!("{k:<28} {cells}{:>14.1}", first_calls(k));
    }
    let cells: String = passes.iter().map(|p| format!("{:>16.1}", best_total.get(p).copied().unwrap_or(0.0))).collect();
    println!("{:<28} {cells}", "fastest per shape (plan)");
}

/// `simple_async_cyclic_cmma` → `sac.cmma`: the table's column heads.
fn abbreviate(kernel: &str) -> String {
    let Some((algorithm, tile)) = kernel.rsplit_once('_') else {
        return kernel.to_string();
    };
    let letters: String = algorithm.split('_').filter_map(|w| w.chars().next()).collect();
    format!("{letters}.{tile}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_heads_abbreviate_kernel_names() {
        assert_eq!(abbreviate("simple_async_cyclic_cmma"), "sac.cmma");
        assert_eq!(abbreviate("specialized_tma_mma"), "st.mma");
        assert_eq!(abbreviate("flex"), "flex");
    }

    #[test]
    fn the_built_in_kernel_and_matmul_go_first_on_every_shape() {
        let names = |ks: Vec<ConvKernel>| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        let rounds = rounds(&names(ConvKernel::candidates()));
        assert_eq!(rounds.len(), 2);
        assert_eq!(rounds[0], ["simple_sync_cyclic_cmma", "matmul"]);
        assert_eq!(rounds[1].len(), 7);
        assert!(rounds[1].iter().all(|k| !rounds[0].contains(k)));
        // The CPU's two kernels: `matmul` first; only one kind: one round.
        assert_eq!(super::rounds(&["flex".into(), "matmul".into()]), [["matmul"], ["flex"]]);
        assert_eq!(super::rounds(&["specialized_tma_cmma".into()]), [["specialized_tma_cmma"]]);
    }

    #[test]
    fn resnet50_has_23_shapes_and_layer_counts_sum_to_53() {
        let args = ConvsArgs { arch: Arch::ResNet50, size: 224, small_stem: false, precision: Precision::F32, kernels: vec![], passes: Pass::ALL.to_vec(), plan: None, resume: false, kernel_timeout: 120.0, channels_last: false, nchw: true };
        let ps = problems(&args, DType::F32);
        assert_eq!(ps.len(), 23);
        assert_eq!(ps.iter().map(|p| p.names.len()).sum::<usize>(), 53);
        // layer1's 3×3 appears in all three blocks; its 1×1 64→256 is also the shortcut.
        let three = ps.iter().find(|p| p.shape.to_string() == "64x56x56 * 64x64x3x3 s1 p1 d1 f32").unwrap();
        assert_eq!(three.names, ["layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]);
        let widen = ps.iter().find(|p| p.shape.to_string() == "64x56x56 * 256x64x1x1 s1 p0 d1 f32").unwrap();
        assert_eq!(widen.names, ["layer1.0.downsample.0", "layer1.0.conv3", "layer1.1.conv3", "layer1.2.conv3"]);
    }
}
