//! bench/gpu_session.sh, the one script a GPU session runs, on stand-ins for `sca`,
//! `nvidia-smi` and the PyTorch reference: which runs it makes, with which arguments, and the
//! layout it goes on with. A mistake here would cost a session's scarce device time.

use std::path::Path;
use std::process::Command;

/// A stand-in `sca`: logs its arguments; `bench gpu` writes one row (case `<--only>
/// last=<0|1>`) whose warm step takes `$FAKE_NCHW_MS` or, with `--channels-last`,
/// `$FAKE_NHWC_MS` milliseconds; `bench convs` writes an empty rows file.
const FAKE_SCA: &str = r#"#!/usr/bin/env bash
echo "$*" >> "$FAKE_CALLS"
json= last=0 only=
for ((i = 1; i <= $#; i++)); do
    j=$((i + 1))
    case ${!i} in
        --json) json=${!j} ;;
        --only) only=${!j} ;;
        --channels-last) last=1 ;;
    esac
done
case "$1 $2" in
    "bench gpu")
        ms=$FAKE_NCHW_MS; [ $last = 1 ] && ms=$FAKE_NHWC_MS
        echo "{\"rows\": [{\"case\": \"$only last=$last\", \"images_per_s\": 9.5, \"ms_per_step\": $ms, \"first_step_s\": 2.0}]}" > "$json" ;;
    "bench convs") echo '{"device": "fake", "rows": []}' > "$json" ;;
esac
"#;

/// A stand-in torch_reference.py: one training row.
const FAKE_TORCH: &str = r#"import json, sys
json.dump({"rows": [{"case": "train", "precision": "fp32", "images_per_s": 1001.7, "ms_per_step": 127.8, "first_step_s": 9.4}]},
          open(sys.argv[sys.argv.index("--json") + 1], "w"))
"#;

struct Session {
    layout: String,
    calls: Vec<String>,
    stdout: String,
    stderr: String,
}

/// `bash bench/gpu_session.sh OUT core` with the stand-ins, NCHW and channels-last warm
/// steps taking the given milliseconds (written into the JSON as they are), in a call of
/// `budget` seconds (`CORE_BUDGET`).
fn core_session(dir: &Path, nchw_ms: &str, nhwc_ms: &str, budget: u32) -> Session {
    core_session_with(dir, nchw_ms, nhwc_ms, budget, &[])
}

/// [`core_session`] with more variables set for the script (e.g. `PLAN`).
fn core_session_with(dir: &Path, nchw_ms: &str, nhwc_ms: &str, budget: u32, vars: &[(&str, &Path)]) -> Session {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let executable = |name: &str, text: &str| {
        let path = bin.join(name);
        write_executable(&path, text);
        path
    };
    let sca = executable("sca", FAKE_SCA);
    executable("nvidia-smi", "#!/bin/sh\necho 'Fake GPU, 1 MiB, 0'\n");
    let torch = dir.join("torch_reference.py");
    std::fs::write(&torch, FAKE_TORCH).unwrap();
    let (out, calls) = (dir.join("out"), dir.join("calls.txt"));
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let o = Command::new("bash")
        .current_dir(root)
        .arg("bench/gpu_session.sh")
        .arg(&out)
        .arg("core")
        .env("PATH", path)
        .env("SCA", &sca)
        .env("TORCH_REF", &torch)
        .env("FAKE_CALLS", &calls)
        .env("FAKE_NCHW_MS", nchw_ms)
        .env("FAKE_NHWC_MS", nhwc_ms)
        .env("CORE_BUDGET", budget.to_string())
        .envs(vars.iter().copied())
        .output()
        .expect("bash runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string());
    assert!(o.status.success(), "{stdout}{stderr}");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}\n{stdout}", p.display()));
    Session { layout: read(&out.join("layout.txt")), calls: read(&calls).lines().map(String::from).collect(), stdout, stderr }
}

/// Whether `script` cannot run here for want of python3 (said, so the test can skip).
fn lacks_python3(script: &str) -> bool {
    let runs = Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success());
    if !runs {
        eprintln!("skipping: {script} needs python3");
    }
    !runs
}

/// Writes `text` to `path` as an executable script.
fn write_executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

#[test]
fn core_goes_on_in_the_layout_whose_warm_step_was_faster() {
    if lacks_python3("bench/gpu_session.sh") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (nchw, nhwc, pick) in [("1157.0", "950.5", "nhwc"), ("900.0", "950.5", "nchw"), ("900.0", "not json", "nchw")] {
        let dir = tmp.path().join(pick).join(nhwc.replace(' ', "-"));
        let s = core_session(&dir, nchw, nhwc, 560);
        assert!(s.layout.starts_with(&format!("{pick}: ")), "{nchw} vs {nhwc}: {}", s.layout);
        // cold (NCHW), nhwc, the convolution benchmark, the plan run, and in the time left
        // the other cases, the profile's two runs of (a) and (c) and bf16: in that order.
        let sca: Vec<&String> = s.calls.iter().collect();
        assert_eq!(sca.len(), 8, "{sca:?}");
        assert!(sca[0].starts_with("bench gpu ") && sca[0].contains("--json ") && sca[0].contains("sca-cold.json"), "{}", sca[0]);
        assert!(sca[0].ends_with("--nchw") && sca[1].contains("sca-nhwc.json") && sca[1].ends_with("--channels-last"), "{sca:?}");
        assert!(sca[2].starts_with("bench convs ") && sca[3].contains("sca-plan.json"), "{sca:?}");
        assert!(sca[4].contains("sca-rest.json") && sca[4].contains("--only b,c,d,e"), "{sca:?}");
        // The profile on the session's caches, the second run into its own folder.
        let cache = format!("--gpu-cache {}", dir.join("out/cubecl").display());
        assert!(sca[5..].iter().all(|c| c.starts_with("bench gpu ") && c.contains("--only a,c") && c.contains(&cache)), "{sca:?}");
        assert!(sca[6].contains("profile/run.json"), "{sca:?}");
        assert!(sca[7].contains("sca-bf16.json") && sca[7].contains("--precision bf16"), "{sca:?}");
        assert!(s.stdout.contains("per-kernel profile (profile/):"), "{}", s.stdout);
        for call in &sca[2..] {
            assert_eq!(call.contains("--channels-last"), pick == "nhwc", "{nchw} vs {nhwc}: {call}");
            assert_eq!(call.contains("--nchw"), pick == "nchw", "{nchw} vs {nhwc}: {call}");
        }
        // The closing table has every run's row, PyTorch's included; a run that left no
        // readable JSON is said to, and the others' rows still come.
        for row in ["cold    a last=0", "torch   train fp32"] {
            assert!(s.stdout.contains(row), "no '{row}' in:\n{}", s.stdout);
        }
        let readable = nhwc.parse::<f64>().is_ok();
        assert_eq!(s.stdout.contains("nhwc    a last=1"), readable, "{}", s.stdout);
        assert_eq!(s.stderr.contains("sca-nhwc.json: unreadable"), !readable, "{}", s.stderr);
        let last = if pick == "nhwc" { 1 } else { 0 };
        assert!(s.stdout.contains(&format!("plan    a last={last}")), "{}", s.stdout);
        assert!(s.stdout.contains(&format!("rest    b,c,d,e last={last}")), "{}", s.stdout);
    }
    // A call whose runs leave under a minute of its budget ends after PyTorch's step.
    let s = core_session(&tmp.path().join("short"), "900.0", "950.5", 30);
    assert_eq!(s.calls.len(), 4, "{:?}", s.calls);
    assert!(!s.stdout.contains("rest "), "{}", s.stdout);
    // Both steps' figures are on record with the choice.
    let s = std::fs::read_to_string(tmp.path().join("nhwc/950.5/out/layout.txt")).unwrap();
    assert_eq!(s.trim(), "nhwc: warm ms per step on the same kernels, NCHW 1157.0, channels-last 950.5");

    // With a plan measured before, it is in the cache from the start and the convolution
    // benchmark is skipped (said), its time going to the other cases.
    let plan = tmp.path().join("plan.json");
    std::fs::write(&plan, r#"{"device": "fake", "shapes": {}}"#).unwrap();
    let s = core_session_with(&tmp.path().join("planned"), "1157.0", "950.5", 560, &[("PLAN", &plan)]);
    assert!(s.calls.iter().all(|c| !c.starts_with("bench convs")), "{:?}", s.calls);
    assert_eq!(s.calls.len(), 7, "cold, nhwc, plan, rest, the profile's two and bf16: {:?}", s.calls);
    assert!(s.stdout.contains("convs f32: skipped, the plan is "), "{}", s.stdout);
    let cached = std::fs::read_to_string(tmp.path().join("planned/out/cubecl/conv-plan.json")).unwrap();
    assert!(cached.contains("fake"), "{cached}");
}

/// A stand-in `sca` for bench/profile_step.sh: logs its working directory and arguments; in
/// the profiled run (a cubecl.toml in its working directory) it writes kernel lines to the
/// profile log the file names, as CubeCL's profiler does, around the phase messages of
/// `sca bench gpu`: a warm-up kernel, two timed steps of three kernels, two phase-timed steps
/// of another, then three feature batches of one. Each message waits for the script's reader.
const FAKE_PROFILED_SCA: &str = r#"#!/usr/bin/env bash
echo "$PWD $*" >> "$FAKE_CALLS"
[ -f cubecl.toml ] || exit 0
prof=$(sed -n 's/^file = "\(.*profile.log\)"$/\1/p' cubecl.toml)
k() { echo "| $1 | $2" >> "$prof"; }
mark() { echo "$1"; sleep 0.3; }
k 9.000ms WarmUpKernel
mark "(a) case: warm-up optimiser 0.0 s"
for s in 1 2; do k 2.000ms KernelA; k 500.000us KernelB; k 1.500ms KernelB; done
mark "(a) case: 10.0 ms/step"
for s in 1 2; do k 50.000ms PhaseStepKernel; done
mark "(a) case: phases of a warm step (device waited on after each): forward 1.0 ms"
mark 'done: {"case": "(a)"}'
for b in 1 2 3; do k 3.000ms KernelD; done
mark 'done: {"case": "(c)"}'
"#;

/// bench/profile_step.sh counts the two timed steps of (a) (not the warm-up, not the
/// phase-timed steps after them) and the three batches of (c), per step; both runs use the
/// cache it is given; the profiled run's cubecl.toml is in a directory of its own.
#[test]
fn the_profile_counts_the_timed_steps_per_step() {
    if lacks_python3("bench/profile_step.sh") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let sca = tmp.path().join("sca");
    write_executable(&sca, FAKE_PROFILED_SCA);
    let (out, cache, calls) = (tmp.path().join("prof"), tmp.path().join("cache"), tmp.path().join("calls.txt"));
    let root = std::fs::canonicalize(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).unwrap();
    let o = Command::new("bash")
        .current_dir(&root)
        .arg("bench/profile_step.sh")
        .arg(&out)
        .args(["--conv", "gemm"])
        .env("SCA", &sca)
        .env("CACHE", &cache)
        .env("FAKE_CALLS", &calls)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    // Per step: KernelA 2 ms once, KernelB 0.5 + 1.5 ms; the (c) kernel 3 ms a batch.
    assert!(stdout.contains("(a) training step: 4.0 ms of kernel time per step, 3 launches per step"), "{stdout}");
    assert!(stdout.contains("2.00 ms  50.0 %  x1     KernelA") && stdout.contains("2.00 ms  50.0 %  x2     KernelB"), "{stdout}");
    assert!(!stdout.contains("PhaseStepKernel") && !stdout.contains("WarmUpKernel"), "{stdout}");
    assert!(stdout.contains("(c) feature batch (first batch included): 3.0 ms of kernel time per step, 1 launches per step"), "{stdout}");
    let calls = std::fs::read_to_string(&calls).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let cache = std::fs::canonicalize(&cache).unwrap();
    assert!(calls.iter().all(|c| c.contains(&format!("--gpu-cache {} ", cache.display())) && c.ends_with("--conv gemm")), "{calls:?}");
    let profiled_dir = calls[1].split(' ').next().unwrap();
    assert!(!Path::new(profiled_dir).starts_with(&root), "the profiled run ran in the checkout: {profiled_dir}");
    assert!(!root.join("cubecl.toml").exists() && !Path::new(profiled_dir).exists(), "a cubecl.toml was left behind");
}

#[test]
fn check_compares_the_gpu_with_the_cpu_under_its_limit() {
    if lacks_python3("bench/gpu_session.sh") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    write_executable(&bin.join("sca"), "#!/bin/sh\necho \"$*\" >> \"$FAKE_CALLS\"\necho 'the GPU agrees with the CPU (tolerances: losses and features 0.05, median update 0.005, worst update 0.5)'\n");
    write_executable(&bin.join("nvidia-smi"), "#!/bin/sh\necho 'Fake GPU, 1 MiB, 0'\n");
    // By default f32 only; CHECK_PRECISIONS adds the mixed-precision runs, each with files of its own.
    for (precisions, wanted) in [(None, vec!["f32"]), (Some("f32 bf16"), vec!["f32", "bf16"])] {
        let (out, calls) = (dir.path().join(format!("out-{}", wanted.len())), dir.path().join(format!("calls-{}.txt", wanted.len())));
        let mut c = Command::new("bash");
        c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .args(["bench/gpu_session.sh", out.to_str().unwrap(), "check"])
            .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
            .env("SCA", bin.join("sca"))
            .env("FAKE_CALLS", &calls);
        if let Some(p) = precisions {
            c.env("CHECK_PRECISIONS", p);
        }
        let o = c.output().expect("bash runs");
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
        let calls = std::fs::read_to_string(&calls).unwrap();
        let want: String = wanted
            .iter()
            .map(|p| {
                let suffix = if *p == "f32" { String::new() } else { format!("-{p}") };
                format!("check-device --device cuda --precision {p} --autotune minimal --gpu-cache {0}/cubecl-check --json {0}/parity{suffix}.json\n", out.display())
            })
            .collect();
        assert_eq!(calls, want, "one call per precision, on a cache of its own (core's first run stays cold), nothing else measured");
        assert!(stdout.contains("the GPU agrees with the CPU"), "its table is printed: {stdout}");
        let runs = std::fs::read_to_string(out.join("runs.txt")).unwrap();
        assert!(runs.starts_with("check-device: exit 0 after "), "{runs}");
        assert_eq!(runs.contains("check-device-bf16: exit 0 after "), wanted.len() == 2, "{runs}");
    }
}
