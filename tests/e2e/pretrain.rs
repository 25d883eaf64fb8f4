//! End-to-end runs of the `sca` binary on tiny data: exact resume after SIGKILL, corrupt
//! checkpoints, config errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sca() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sca"))
}

/// A run small enough for a test: 64 training images at 32 px, batch 16, 3 epochs.
const TINY: &[&str] = &[
    "--set", "epochs=3",
    "--set", "batch_size=16",
    "--set", "data.train_size=64",
    "--set", "data.test_size=32",
    "--set", "data.image_size=32",
    "--set", "data.workers=2",
    "--set", "data.augment.crops=[{\"count\":2,\"size\":32,\"min_scale\":0.3,\"max_scale\":1.0}]",
    "--set", "model.small_stem=false",
    "--set", "addon.clusters=4",
    "--set", "engine.prototypes=8",
    "--set", "engine.hidden_dim=64",
    "--set", "eval.knn_k=10",
    "--set", "log_every=1",
];

fn pretrain(out: &Path, extra: &[&str]) -> Command {
    let mut c = sca();
    c.args(["pretrain", "--device", "cpu", "--out"]).arg(out).args(TINY).args(extra);
    c
}

/// `sca pretrain --resume DIR` on the CPU, with extra arguments.
fn resume(run: &Path, extra: &[&str]) -> Command {
    let mut c = sca();
    c.args(["pretrain", "--device", "cpu", "--resume"]).arg(run).args(extra);
    c
}

/// Blocks until the run's first checkpoint exists (at most 10 minutes).
fn wait_for_checkpoint(run: &Path) {
    let (latest, t0) = (run.join("checkpoints/latest.ckpt"), Instant::now());
    while !latest.exists() {
        assert!(t0.elapsed() < Duration::from_secs(600), "no checkpoint appeared in {}", run.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_ok(mut c: Command) -> String {
    let out = c.output().expect("sca runs");
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sca failed:\n{text}");
    text
}

fn run_err(mut c: Command) -> String {
    let out = c.output().expect("sca runs");
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "sca should have failed:\n{text}");
    text
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn killed_or_interrupted_runs_resume_to_bit_identical_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (full, killed) = (tmp.path().join("full"), tmp.path().join("killed"));
    run_ok(pretrain(&full, &[]));

    // Kill the second run with SIGKILL once its first checkpoint exists (mid-epoch 1).
    let mut child = pretrain(&killed, &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for_checkpoint(&killed);
    std::thread::sleep(Duration::from_millis(100));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!killed.join("backbone.safetensors").exists(), "the run was killed before it finished");

    let log = run_ok(resume(&killed, &[]));
    assert!(log.contains("resumed from"), "{log}");
    assert_eq!(read(full.join("backbone.safetensors")), read(killed.join("backbone.safetensors")), "weights differ after resume");

    // Ctrl-C (SIGINT) mid-epoch: the step finishes, a checkpoint is written, the process
    // exits cleanly, and resuming also ends bit-identical.
    let interrupted = tmp.path().join("interrupted");
    let child = pretrain(&interrupted, &[]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_checkpoint(&interrupted);
    let signal = Command::new("sh").arg("-c").arg(format!("kill -INT {}", child.id())).status().unwrap();
    assert!(signal.success());
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "Ctrl-C should exit cleanly:\n{log}");
    assert!(log.contains("interrupted: checkpoint written at epoch 1, batch "), "{log}");
    assert!(!interrupted.join("backbone.safetensors").exists());
    run_ok(resume(&interrupted, &[]));
    assert_eq!(read(full.join("backbone.safetensors")), read(interrupted.join("backbone.safetensors")), "weights differ after Ctrl-C");

    // Both runs log every epoch with a KNN figure.
    let metrics = String::from_utf8(read(full.join("metrics.jsonl"))).unwrap();
    let epochs: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).filter(|v: &serde_json::Value| v.get("epoch_seconds").is_some()).collect();
    assert_eq!(epochs.len(), 3);
    assert!(epochs.iter().all(|e| e["knn_top1"].as_f64().is_some() && e["loss_mu"].as_f64().is_some()));
}

#[test]
fn corrupt_latest_checkpoint_falls_back_to_previous() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    run_ok(pretrain(&run, &["--set", "epochs=2"]));
    let latest = run.join("checkpoints/latest.ckpt");
    let mut bytes = read(latest.clone());
    let n = bytes.len();
    bytes[n - 10] ^= 0xFF;
    std::fs::write(&latest, &bytes).unwrap();
    let log = run_ok(resume(&run, &[]));
    assert!(log.contains("latest.ckpt is damaged (checkpoint blob"), "{log}");
    assert!(log.contains("resumed from") && log.contains("previous.ckpt at epoch 1, batch 0"), "{log}");
}

#[test]
fn config_errors_name_the_key_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |set: &str, expected: &str| {
        let mut c = sca();
        c.args(["pretrain", "--device", "cpu", "--out"]).arg(tmp.path().join("x")).args(["--set", set]);
        let err = run_err(c);
        assert!(err.contains(expected), "--set {set}: {err}");
    };
    check("addon.clusterz=5", "configs/default.json (built in): key 'addon.clusterz': unknown field `clusterz`");
    check("epochs=\"many\"", "key 'epochs': invalid type: string \"many\", expected usize");
    check("batch_size=0", "key 'batch_size' must be at least 1");
    check("model.arch=resnet99", "key 'model.arch': unknown variant `resnet99`");
    check("data.augment.std=[0.2,0.0,0.2]", "keys 'data.augment.mean'/'std' must be finite with std > 0");
    check("optim.core.base=-1", "key 'optim.core': learning rates must be finite and not negative");
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "{ \"name\": ").unwrap();
    let mut c = sca();
    c.args(["pretrain", "--config"]).arg(&bad);
    let err = run_err(c);
    assert!(err.contains("bad.json: invalid JSON"), "{err}");
}

#[test]
fn non_finite_loss_stops_naming_step_and_term_and_keeps_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    run_ok(pretrain(&run, &["--set", "epochs=1"]));
    let latest = run.join("checkpoints/latest.ckpt");
    let good = read(latest.clone());
    // Continue for one more epoch with an absurd learning rate: the weights overflow.
    let err = run_err(resume(&run, &["--set", "epochs=2", "--set", "optim.core.base=1e30", "--set", "optim.core.final=1e30"]));
    assert!(err.contains("loss term '") && err.contains("at epoch 1, step "), "{err}");
    assert!(err.contains("stopping (the last checkpoint is kept)"), "{err}");
    assert_eq!(read(latest), good, "the last good checkpoint was overwritten");
}

#[test]
fn gpu_benchmark_runs_scaled_down_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("gpu.json");
    let mut c = sca();
    c.args(["bench", "gpu", "--device", "cpu", "--scale", "0.0005", "--size", "32", "--feature-batch", "2", "--batch", "2", "--steps", "1", "--json"]).arg(&json);
    let log = run_ok(c);
    assert!(log.contains("(a) SwAV ResNet-50") && log.contains("(e) KNN 25 x 640 x 2048"), "{log}");
    let v: serde_json::Value = serde_json::from_slice(&read(json.clone())).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    // Explicit kernels that refused a shape are listed: none on the CPU (it has no plan).
    assert_eq!(v["fallbacks"].as_array().map(Vec::len), Some(0), "{v}");
    assert!(rows.iter().all(|r| r["ms_per_step"].as_f64().is_some_and(|t| t > 0.0)), "{rows:?}");
    // The training-step cases break a warm step down by phase.
    for r in &rows[..2] {
        for phase in ["upload_ms", "forward_host_ms", "forward_ms", "backward_host_ms", "backward_ms", "optimiser_ms"] {
            assert!(r[phase].as_f64().is_some_and(|t| t > 0.0), "{phase} missing: {r}");
        }
    }
    assert!(log.contains("phases of a warm step (device waited on after each): upload ") && log.contains(" ms, forward_host "), "{log}");

    // A subset of the cases in another setting; the warm-up step reports its phases.
    let mut c = sca();
    c.args(["bench", "gpu", "--device", "cpu", "--size", "32", "--feature-batch", "2", "--batch", "2", "--steps", "1"]);
    c.args(["--only", "a,c", "--conv", "native", "--precision", "bf16", "--channels-last", "--json"]).arg(&json);
    let log = run_ok(c);
    for phase in ["forward", "backward", "optimiser"] {
        assert!(log.contains(&format!("native conv, bf16, channels-last: warm-up {phase} ")), "{phase} not reported:\n{log}");
    }
    let v: serde_json::Value = serde_json::from_slice(&read(json)).unwrap();
    let cases: Vec<&str> = v["rows"].as_array().unwrap().iter().map(|r| r["case"].as_str().unwrap()).collect();
    assert_eq!(cases.len(), 2, "{cases:?}");
    assert!(cases[0].starts_with("(a)") && cases[1].starts_with("(c)") && cases.iter().all(|c| c.ends_with("native conv, bf16, channels-last")), "{cases:?}");
    let mut c = sca();
    c.args(["bench", "gpu", "--device", "cpu", "--only", "a,z"]);
    assert!(run_err(c).contains("--only: unknown case 'z'"));
    for flag in ["--feature-batch", "--steps", "--batch", "--size"] {
        let mut c = sca();
        c.args(["bench", "gpu", "--device", "cpu", flag, "0"]);
        let err = run_err(c);
        assert!(err.contains(&format!("invalid value '0' for '{flag} <")) && err.contains("must be at least 1"), "{flag}: {err}");
    }
}

/// `bench gpu` puts each case's row in `--json` as the case ends: a run killed in a later
/// case (a session's time limit) keeps the figures of the earlier ones.
#[test]
fn gpu_benchmark_keeps_finished_cases_when_killed_in_a_later_one() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("gpu.json");
    let mut c = sca();
    // (d) at 5 % of its size: k-means of 64,000 points into 3,000 clusters, seconds on a CPU.
    c.args(["bench", "gpu", "--device", "cpu", "--only", "a,d", "--scale", "0.05", "--size", "32", "--batch", "2", "--steps", "1", "--json"]).arg(&json);
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    let doc = loop {
        if let Ok(text) = std::fs::read(&json) {
            break serde_json::from_slice::<serde_json::Value>(&text).expect("written whole (atomically)");
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before writing {}", json.display());
        assert!(t0.elapsed() < Duration::from_secs(600), "no rows after 10 minutes");
        std::thread::sleep(Duration::from_millis(20));
    };
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(still_running, "(d) ended before (a)'s row was seen: nothing shows the rows are written as they come");
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{doc}");
    assert!(rows[0]["case"].as_str().unwrap().starts_with("(a) SwAV ResNet-50") && rows[0]["ms_per_step"].as_f64().is_some_and(|t| t > 0.0), "{doc}");
    assert!(doc["fallbacks"].is_array(), "{doc}");
    // What the killed run left is what the file holds.
    let after: serde_json::Value = serde_json::from_slice(&read(json)).unwrap();
    assert_eq!(after["rows"].as_array().unwrap().len(), 1);
}

#[test]
fn convolution_benchmark_times_every_shape_and_pass_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("convs.json");
    let mut c = sca();
    c.args(["bench", "convs", "--device", "cpu", "--arch", "resnet18", "--small-stem", "--size", "32", "--batch", "2", "--steps", "1", "--precision", "bf16", "--kernels", "flex", "--nchw"]);
    c.args(["--plan"]).arg(tmp.path().join("plan.json")).arg("--json").arg(&json);
    let log = run_ok(c);
    // ResNet-18 with the small stem: 20 convolutions in 11 shapes, three passes each but
    // the stem's data gradient (the images need none).
    assert!(log.contains("20 convolutions of resnet18 at 32 px in 11 shapes"), "{log}");
    // Measured heaviest first (multiply-adds × layers): layer1's four 3×3 convolutions
    // (32·32·64·576 each), and the stem (32·32·64·27) last.
    assert!(log.contains("[1/11] 64x32x32 * 64x64x3x3 s1 p1 d1 bf16 (4 layers) measured"), "{log}");
    assert!(log.contains("[11/11] 3x32x32 * 64x3x3x3 s1 p1 d1 bf16 (1 layers) measured"), "{log}");
    assert!(log.contains("no plan written: plans steer only the CUDA backend's kernels"), "{log}");
    assert!(!tmp.path().join("plan.json").exists());
    let v: serde_json::Value = serde_json::from_slice(&read(json.clone())).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 32);
    assert!(!rows.iter().any(|r| r["layers"][0] == "conv1" && r["pass"] == "data"));
    assert!(rows.iter().all(|r| r["kernel"] == "flex" && r["ms"].as_f64().is_some_and(|t| t > 0.0)), "{rows:?}");
    // The per-kernel network totals are each shape's time times its layer count.
    let total = |pass: &str| -> f64 {
        rows.iter().filter(|r| r["pass"] == pass).map(|r| r["ms"].as_f64().unwrap() * r["layers"].as_array().unwrap().len() as f64).sum()
    };
    let line = log.lines().find(|l| l.starts_with("flex ")).unwrap_or_else(|| panic!("{log}"));
    let printed: Vec<f64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
    assert_eq!(printed.len(), 4, "three passes and the first calls: {line}");
    let first: f64 = rows.iter().map(|r| r["first_s"].as_f64().unwrap()).sum();
    assert!((printed[3] - first).abs() <= 0.05 + 1e-3 * first, "first calls: printed {} vs {first}", printed[3]);
    for (i, pass) in ["forward", "data", "weight"].into_iter().enumerate() {
        assert!((printed[i] - total(pass)).abs() <= 0.05 + 1e-3 * total(pass), "{pass}: printed {} vs {}", printed[i], total(pass));
    }

    // bench/compare_convs.py joins these rows with PyTorch's on the shape key: here a
    // PyTorch file at exactly twice our time per call, so every total reads 0.50.
    compare_convs_reads_half(tmp.path(), &json, "bf16");
    let mut c = sca();
    c.args(["bench", "convs", "--device", "cpu", "--kernels", "simple_sync_cyclic_cmma"]);
    assert!(run_err(c).contains("no kernel 'simple_sync_cyclic_cmma' on this backend (it has: flex, matmul)"));

    // The default candidates on the CPU: the backend's kernel and the matmul kernel
    // (im2col + matmul), which takes all 23 shapes of ResNet-50.
    let mut c = sca();
    c.args(["bench", "convs", "--device", "cpu", "--small-stem", "--size", "16", "--batch", "2", "--steps", "1", "--passes", "weight", "--json"]).arg(&json);
    let log = run_ok(c);
    let v: serde_json::Value = serde_json::from_slice(&read(json)).unwrap();
    let matmul: Vec<&serde_json::Value> = v["rows"].as_array().unwrap().iter().filter(|r| r["kernel"] == "matmul").collect();
    assert_eq!(matmul.len(), 23);
    assert!(matmul.iter().all(|r| r["ms"].as_f64().is_some_and(|t| t > 0.0) && r["pass"] == "weight"), "{matmul:?}");
    let line = log.lines().find(|l| l.starts_with("matmul ")).unwrap_or_else(|| panic!("{log}"));
    assert!(!line.contains('+'), "no shape refused: {line}");
}

/// Runs bench/compare_convs.py on the rows in `ours` against a PyTorch file made from them at
/// exactly twice each time (keyed as torch_reference.py keys them: no ` nhwc`), and checks
/// that every pass's network total reads 0.50, PyTorch's total twice ours. Skipped (said)
/// where python3 cannot run.
fn compare_convs_reads_half(dir: &Path, ours: &Path, precision: &str) {
    let doc: serde_json::Value = serde_json::from_slice(&read(ours.to_path_buf())).unwrap();
    let torch_rows: Vec<serde_json::Value> = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let shape = r["shape"].as_str().unwrap().trim_end_matches(" nhwc");
            serde_json::json!({"precision": precision, "shape": shape, "pass": r["pass"], "layers": r["layers"], "ms": 2.0 * r["ms"].as_f64().unwrap()})
        })
        .collect();
    let passes: Vec<String> = doc["rows"].as_array().unwrap().iter().map(|r| r["pass"].as_str().unwrap().to_string()).fold(Vec::new(), |mut v, p| {
        if !v.contains(&p) {
            v.push(p);
        }
        v
    });
    let torch_json = dir.join("torch.json");
    std::fs::write(&torch_json, serde_json::to_vec(&serde_json::json!({"rows": [], "convs": torch_rows})).unwrap()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/compare_convs.py");
    match Command::new("python3").arg(script).arg(ours).arg(&torch_json).output() {
        Err(e) => eprintln!("skipping the compare_convs.py check: python3 not runnable ({e})"),
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{text}");
            let totals: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("one network pass")).skip(2).collect();
            assert_eq!(totals.len(), passes.len(), "{text}");
            for (line, pass) in totals.iter().zip(&passes) {
                let cells: Vec<&str> = line.split_whitespace().collect();
                assert_eq!((cells[0], cells[4]), (pass.as_str(), "0.50"), "{text}");
                // Built-in and fastest are the one CPU kernel; PyTorch's total is twice it.
                let (ours, torch): (f64, f64) = (cells[2].parse().unwrap(), cells[3].parse().unwrap());
                assert!((torch - 2.0 * ours).abs() <= 0.1 + 1e-3 * torch, "{line}");
            }
        }
    }
}

/// By default (as `model.channels_last` trains) the convolutions are measured on NHWC
/// activations (all but the stem's input), under keys of their own that compare_convs.py
/// still joins with PyTorch's.
#[test]
fn convolution_benchmark_measures_channels_last_activations() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("convs.json");
    let mut c = sca();
    c.args(["bench", "convs", "--device", "cpu", "--arch", "resnet18", "--small-stem", "--size", "16", "--batch", "2", "--steps", "1"]);
    c.args(["--passes", "forward,data", "--kernels", "flex", "--json"]).arg(&json);
    let log = run_ok(c);
    assert!(log.contains("activations channels-last (NHWC)"), "{log}");
    assert!(log.contains("[1/11] 64x16x16 * 64x64x3x3 s1 p1 d1 f32 nhwc (4 layers) measured"), "{log}");
    let doc: serde_json::Value = serde_json::from_slice(&read(json.clone())).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    // 11 shapes × 2 passes, less the stem's data gradient.
    assert_eq!(rows.len(), 21, "{rows:?}");
    assert!(rows.iter().all(|r| r["shape"].as_str().unwrap().ends_with(" nhwc") && r["ms"].as_f64().is_some_and(|t| t > 0.0)), "{rows:?}");
    compare_convs_reads_half(tmp.path(), &json, "fp32");
}

#[test]
fn convolution_benchmark_resumes_where_a_run_ended() {
    let tmp = tempfile::tempdir().unwrap();
    let (full, cut) = (tmp.path().join("full.json"), tmp.path().join("cut.json"));
    let bench = |json: &Path, batch: &str| {
        let mut c = sca();
        c.args(["bench", "convs", "--device", "cpu", "--arch", "resnet18", "--small-stem", "--size", "16", "--steps", "1", "--passes", "forward", "--kernels", "flex,matmul", "--nchw"]);
        c.args(["--batch", batch, "--json"]).arg(json);
        c
    };
    let log = run_ok(bench(&full, "2"));
    // Two rounds: `matmul` on every shape, heaviest first, then the CPU backend's kernel.
    assert!(log.contains("round 1/2 (matmul): [1/11] 64x16x16 * 64x64x3x3 s1 p1 d1 f32 (4 layers) measured"), "{log}");
    assert!(log.contains("round 2/2 (flex): [11/11] 3x16x16 * 64x3x3x3 s1 p1 d1 f32 (1 layers) measured"), "{log}");
    let doc: serde_json::Value = serde_json::from_slice(&read(full.clone())).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 22, "11 shapes × 2 kernels");
    assert!(rows[..11].iter().all(|r| r["kernel"] == "matmul") && rows[11..].iter().all(|r| r["kernel"] == "flex"));
    // A run that ended while `matmul` ran the sixth shape: five rows done, the sixth on
    // record as running (what the benchmark writes before each kernel runs).
    let mut ended = rows[5].clone();
    for k in ["ms", "tflops", "first_s"] {
        ended.as_object_mut().unwrap().remove(k);
    }
    ended["refused"] = "the run ended while this kernel ran (a crash, or the time limit)".into();
    let kept: Vec<serde_json::Value> = rows[..5].iter().cloned().chain([ended.clone()]).collect();
    std::fs::write(&cut, serde_json::to_vec(&serde_json::json!({"device": doc["device"], "rows": kept})).unwrap()).unwrap();

    let mut c = bench(&cut, "2");
    c.arg("--resume");
    let log = run_ok(c);
    assert!(log.contains("6 rows kept (1 of them the kernel running when that run ended"), "{log}");
    // The ETA comes from what this run measures, not from the rows it passed over.
    let progress = |n: usize| log.lines().find(|l| l.starts_with(&format!("round 1/2 (matmul): [{n}/11] "))).unwrap_or_else(|| panic!("{log}"));
    assert!(progress(6).ends_with("nothing measured yet"), "{log}");
    assert!(progress(7).ends_with(" s left"), "{log}");
    let resumed: serde_json::Value = serde_json::from_slice(&read(cut.clone())).unwrap();
    let resumed = resumed["rows"].as_array().unwrap();
    assert_eq!(resumed.len(), 22, "{resumed:?}");
    // The five measured rows are kept as they were (a second measurement would not repeat
    // the same times), the running one stays refused, the other sixteen are measured now.
    assert_eq!(&resumed[..5], &rows[..5]);
    assert_eq!(resumed[5], ended);
    for (r, o) in resumed[6..].iter().zip(&rows[6..]) {
        assert_eq!((&r["shape"], &r["kernel"]), (&o["shape"], &o["kernel"]));
        assert!(r["ms"].as_f64().is_some_and(|t| t > 0.0) && r.get("refused").is_none(), "{r}");
    }
    // The refused shape shows in the network totals as layers not counted.
    let layers = ended["layers"].as_array().unwrap().len();
    let line = log.lines().find(|l| l.starts_with("matmul ")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(&format!("+{layers}")), "{line}");

    let mut c = bench(&cut, "3");
    c.arg("--resume");
    assert!(run_err(c).contains("were measured at batch 2, this run's batch is 3"));
    let mut c = sca();
    c.args(["bench", "convs", "--device", "cpu", "--resume"]);
    assert!(run_err(c).contains("name their file with --json"));

    // A kernel past --kernel-timeout ends the run (exit 3) with its row on record as the one
    // running, and a resumed run goes on without it.
    let timed = tmp.path().join("timed.json");
    let mut c = bench(&timed, "2");
    c.args(["--kernel-timeout", "0.000001"]);
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("ran past --kernel-timeout") && err.contains("rerun with --resume"), "{err}");
    let doc: serde_json::Value = serde_json::from_slice(&read(timed.clone())).unwrap();
    let (last, before) = doc["rows"].as_array().unwrap().split_last().unwrap();
    assert_eq!(last["refused"], ended["refused"]);
    assert!(before.iter().all(|r| r["ms"].is_number()), "{before:?}");
    let mut c = bench(&timed, "2");
    c.arg("--resume");
    run_ok(c);
    let doc: serde_json::Value = serde_json::from_slice(&read(timed)).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 22);
    assert_eq!(rows.iter().filter(|r| r.get("ms").is_none()).count(), 1, "{rows:?}");

    std::fs::write(&cut, "{\"device\": ").unwrap();
    let mut c = bench(&cut, "2");
    c.arg("--resume");
    let err = run_err(c);
    assert!(err.contains("cut.json is not JSON (truncated?)"), "{err}");
}

/// `check-device` compares a GPU with the CPU: on the CPU it says there is nothing to compare
/// (and with `auto` on a machine without the driver, that it found none).
#[test]
fn check_device_needs_a_gpu() {
    let mut c = sca();
    c.args(["check-device", "--device", "cpu"]);
    let err = run_err(c);
    assert!(err.contains("--device cpu leaves nothing to compare"), "{err}");
    if !std::path::Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.1").exists() {
        let mut c = sca();
        c.args(["check-device"]);
        let err = run_err(c);
        assert!(err.contains("--device auto found no NVIDIA driver"), "{err}");
    }
    let mut c = sca();
    c.args(["check-device", "--device", "cpu", "--size", "0"]);
    assert!(run_err(c).contains("must be at least 1"));
    // The convolutions' arithmetic is checked as trained: f32, bf16 or f16.
    let mut c = sca();
    c.args(["check-device", "--device", "cpu", "--precision", "fp8"]);
    let err = run_err(c);
    assert!(err.contains("fp8") && err.contains("--precision"), "{err}");
    let mut c = sca();
    c.args(["check-device", "--device", "cpu", "--precision", "bf16"]);
    assert!(run_err(c).contains("--device cpu leaves nothing to compare"));
}
