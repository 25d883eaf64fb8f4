//! Data-parallel runs of the `sca` binary on the CPU: two replicas in one process
//! (`--devices cpu:0,cpu:1`) and two processes meeting at a coordinator on 127.0.0.1
//! (`--nodes 2`) train like one replica with the whole batch.

use std::path::Path;
use std::process::{Child, Command, Stdio};

fn sca() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sca"))
}

/// One epoch of 64 images at 32 px in global batches of 16, a loss line per step.
const TINY: &[&str] = &[
    "--set", "epochs=1",
    "--set", "batch_size=16",
    "--set", "data.train_size=64",
    "--set", "data.test_size=32",
    "--set", "data.image_size=32",
    "--set", "data.workers=1",
    "--set", "data.augment.crops=[{\"count\":2,\"size\":32,\"min_scale\":0.3,\"max_scale\":1.0}]",
    "--set", "addon.clusters=4",
    "--set", "engine.prototypes=8",
    "--set", "engine.hidden_dim=64",
    "--set", "eval.knn_k=10",
    "--set", "log_every=1",
];

/// `sca pretrain` into `out`, its messages into `out.log` (a pipe left unread while another
/// process is awaited could fill up and stall the group).
fn pretrain(out: &Path, extra: &[&str]) -> (Command, std::path::PathBuf) {
    let log = out.with_extension("log");
    let mut c = sca();
    c.arg("pretrain").arg("--out").arg(out).args(TINY).args(extra);
    c.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    (c, log)
}

fn run_ok((mut c, log): (Command, std::path::PathBuf), what: &str) -> String {
    wait_ok(c.spawn().unwrap(), &log, what)
}

fn wait_ok(mut child: Child, log: &Path, what: &str) -> String {
    let status = child.wait().expect("sca runs");
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(status.success(), "{what} failed:\n{text}");
    text
}

/// (loss, loss_ssl, loss_mu, loss_cls) of every step in `metrics.jsonl`.
fn step_losses(run: &Path) -> Vec<[f64; 4]> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("batch").is_some())
        .map(|v| ["loss", "loss_ssl", "loss_mu", "loss_cls"].map(|k| v[k].as_f64().unwrap()))
        .collect()
}

fn assert_same_curve(got: &[[f64; 4]], want: &[[f64; 4]], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: steps");
    for (s, (g, w)) in got.iter().zip(want).enumerate() {
        for k in 0..4 {
            assert!((g[k] - w[k]).abs() <= 1e-4 * w[k].abs().max(1e-2), "{what}, step {s}: {g:?} vs one replica {w:?}");
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn two_devices_and_two_loopback_processes_train_like_one_replica() {
    let tmp = tempfile::tempdir().unwrap();
    let (single, local, nodes) = (tmp.path().join("single"), tmp.path().join("local"), tmp.path().join("nodes"));

    run_ok(pretrain(&single, &["--device", "cpu"]), "one replica");
    let want = step_losses(&single);
    assert_eq!(want.len(), 4, "64 images in batches of 16");

    let text = run_ok(pretrain(&local, &["--devices", "cpu:0,cpu:1"]), "--devices cpu:0,cpu:1");
    assert!(text.contains("2 replicas") && text.contains("synchronised batch norm"), "{text}");
    assert_same_curve(&step_losses(&local), &want, "two devices");
    assert!(local.join("backbone.safetensors").exists() && local.join("checkpoints/latest.ckpt").exists());

    // Two processes through burn-collective's orchestrator (node 0 hosts it).
    let port = free_port().to_string();
    let coordinator = format!("127.0.0.1:{port}");
    let node = |rank: &str, out: &Path| {
        let (mut c, log) = pretrain(out, &["--devices", "cpu:0", "--nodes", "2", "--node-rank", rank, "--coordinator", &coordinator]);
        (c.spawn().unwrap(), log)
    };
    let (n0, log0) = node("0", &nodes);
    let (n1, log1) = node("1", &tmp.path().join("node1"));
    let (t0, t1) = (wait_ok(n0, &log0, "node 0"), wait_ok(n1, &log1, "node 1"));
    assert!(t0.contains("coordinator listening"), "{t0}");
    assert_same_curve(&step_losses(&nodes), &want, "two processes");
    assert!(!tmp.path().join("node1/metrics.jsonl").exists(), "only node 0 writes the run:\n{t1}");

    // A two-device run resumes on one device (no SwAV queue here) and goes on training.
    let more = sca().args(["pretrain", "--device", "cpu", "--set", "epochs=2", "--resume"]).arg(&local).output().unwrap();
    assert!(more.status.success(), "{}", String::from_utf8_lossy(&more.stderr));
    assert_eq!(step_losses(&local).len(), 8);
}
