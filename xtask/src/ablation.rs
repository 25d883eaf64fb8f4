//! `cargo xtask ablation`: SwAV, SwAV + add-on, SimSiam and SimSiam + add-on with the same
//! budget and seeds; writes a table (KNN top-1 mean ± std, final loss terms, wall time) into
//! docs/RESULTS.md between markers, so reruns replace it.

use std::path::Path;
use std::time::Instant;

use xshell::{cmd, Shell};

#[derive(clap::Args)]
pub struct Args {
    /// builtin or fashion-mnist.
    #[arg(long, default_value = "builtin")]
    pub dataset: String,
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Extra overrides applied to every run (e.g. `--set epochs=2`).
    #[arg(long = "set")]
    pub overrides: Vec<String>,
    /// Where the runs go.
    #[arg(long, default_value = "runs/ablation")]
    pub out: String,
}

struct Row {
    name: String,
    knn: Vec<f64>,
    initial_knn: Vec<f64>,
    last: serde_json::Value,
    seconds: f64,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, var.sqrt())
}

pub fn run(sh: &Shell, a: Args) -> anyhow::Result<()> {
    let sca = crate::sca::build(sh)?;
    let (swav, simsiam, extra): (&str, &str, Vec<String>) = match a.dataset.as_str() {
        "builtin" => ("configs/default.json", "configs/builtin-simsiam.json", vec![]),
        // The Fashion-MNIST configs are sized for a GPU; this keeps the CPU ablation short.
        "fashion-mnist" => (
            "configs/fmnist-swav.json",
            "configs/fmnist-simsiam.json",
            ["epochs=4", "batch_size=64", "data.train_size=2048", "data.test_size=1000", "model.small_stem=false"].map(String::from).to_vec(),
        ),
        other => anyhow::bail!("unknown dataset '{other}' (builtin or fashion-mnist)"),
    };
    let mut rows = Vec::new();
    for (name, config, addon) in [("SwAV", swav, false), ("SwAV + add-on", swav, true), ("SimSiam", simsiam, false), ("SimSiam + add-on", simsiam, true)] {
        let mut row = Row { name: name.into(), knn: vec![], initial_knn: vec![], last: serde_json::Value::Null, seconds: 0.0 };
        for seed in 0..a.seeds {
            let dir = format!("{}/{}/{}-seed{seed}", a.out, a.dataset, name.replace(" + ", "-").to_lowercase());
            let _ = std::fs::remove_dir_all(&dir);
            let mut sets = vec![format!("seed={seed}"), format!("addon.enabled={addon}")];
            sets.extend(extra.iter().cloned());
            sets.extend(a.overrides.iter().cloned());
            let sets: Vec<String> = sets.into_iter().flat_map(|s| ["--set".to_string(), s]).collect();
            let device = &a.device;
            let t0 = Instant::now();
            cmd!(sh, "{sca} pretrain --config {config} --out {dir} --device {device} {sets...}").run()?;
            row.seconds += t0.elapsed().as_secs_f64();
            let (initial, last) = first_and_last_epoch(Path::new(&dir))?;
            row.initial_knn.push(initial["initial_knn_top1"].as_f64().unwrap_or(f64::NAN));
            row.knn.push(last["knn_top1"].as_f64().unwrap_or(f64::NAN));
            row.last = last;
        }
        row.seconds /= a.seeds.max(1) as f64;
        rows.push(row);
    }
    let table = render(&a, &rows);
    println!("{table}");
    write_results(&a.dataset, &table)
}

/// The initial-KNN line and the last epoch summary of a run's metrics.jsonl.
fn first_and_last_epoch(dir: &Path) -> anyhow::Result<(serde_json::Value, serde_json::Value)> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl"))?;
    let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let initial = lines.iter().find(|v| v.get("initial_knn_top1").is_some()).cloned().unwrap_or_default();
    let last = lines
        .into_iter()
        .rfind(|v| v.get("epoch_seconds").is_some())
        .ok_or_else(|| anyhow::anyhow!("{} has no epoch summary", dir.display()))?;
    Ok((initial, last))
}

fn render(a: &Args, rows: &[Row]) -> String {
    let f = |v: &serde_json::Value| v.as_f64().map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
    let sets = if a.overrides.is_empty() { String::new() } else { format!(" --set {}", a.overrides.join(" --set ")) };
    let mut s = format!(
        "Command: `cargo xtask ablation --dataset {} --seeds {} --device {}{sets}` ({} per row).\n\n",
        a.dataset,
        a.seeds,
        a.device,
        if a.seeds == 1 { "1 seed".to_string() } else { format!("{} seeds", a.seeds) }
    );
    s += "| method | KNN top-1 % after training (mean ± std) | KNN top-1 % at initialisation | final L_ssl | final L_μ | final L_cls | wall time per run (s) |\n|---|---|---|---|---|---|---|\n";
    // One seed has no spread to report.
    let pm = |v: &[f64]| {
        let (m, sd) = mean_std(v);
        if v.len() > 1 { format!("{m:.2} ± {sd:.2}") } else { format!("{m:.2}") }
    };
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} |\n",
            r.name, pm(&r.knn), pm(&r.initial_knn), f(&r.last["loss_ssl"]), f(&r.last["loss_mu"]), f(&r.last["loss_cls"]), r.seconds
        );
    }
    s
}

/// Replaces the block between `<!-- ablation:NAME -->` and `<!-- /ablation:NAME -->`.
fn write_results(dataset: &str, table: &str) -> anyhow::Result<()> {
    let path = Path::new("docs/RESULTS.md");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (open, close) = (format!("<!-- ablation:{dataset} -->"), format!("<!-- /ablation:{dataset} -->"));
    let block = format!("{open}\n{table}{close}");
    let new = match (text.find(&open), text.find(&close)) {
        (Some(i), Some(j)) if j > i => format!("{}{block}{}", &text[..i], &text[j + close.len()..]),
        _ => format!("{text}\n## Ablation: {dataset}\n\n{block}\n"),
    };
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, new)?;
    std::fs::rename(tmp, path)?;
    println!("wrote the table to {}", path.display());
    Ok(())
}
