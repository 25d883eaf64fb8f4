//! `cargo xtask pipeline`: pretrain → eval-knn → eval-linear → cam-metrics → export into
//! one run directory, then a summary table.

use std::path::Path;

use xshell::{cmd, Shell};

#[derive(clap::Args)]
pub struct Args {
    /// Experiment config; the built-in default when omitted.
    #[arg(long)]
    pub config: Option<String>,
    /// Run directory (default: runs/<name from the config>).
    #[arg(long)]
    pub out: Option<String>,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Config overrides for pretraining, e.g. `--set epochs=2`.
    #[arg(long = "set")]
    pub overrides: Vec<String>,
}

pub fn run(sh: &Shell, a: Args) -> anyhow::Result<()> {
    let sca = crate::sca::build(sh)?;
    let out = match &a.out {
        Some(o) => o.clone(),
        None => format!("runs/{}", config_name(a.config.as_deref())?),
    };
    let device = &a.device;
    let mut pre = vec!["--out".to_string(), out.clone(), "--device".into(), device.clone()];
    if let Some(c) = &a.config {
        pre.extend(["--config".into(), c.clone()]);
    }
    for s in &a.overrides {
        pre.extend(["--set".into(), s.clone()]);
    }
    cmd!(sh, "{sca} pretrain {pre...}").run()?;
    cmd!(sh, "{sca} eval-knn --run {out} --device {device}").run()?;
    cmd!(sh, "{sca} eval-linear --run {out} --device {device}").run()?;
    cmd!(sh, "{sca} cam-metrics --run {out} --device {device}").run()?;
    cmd!(sh, "{sca} export --run {out}").run()?;
    print_summary(Path::new(&out))
}

fn config_name(config: Option<&str>) -> anyhow::Result<String> {
    let path = config.unwrap_or("configs/default.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    Ok(v["name"].as_str().unwrap_or("run").to_string())
}

fn read_json(path: &Path) -> serde_json::Value {
    std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(serde_json::Value::Null)
}

pub fn print_summary(run: &Path) -> anyhow::Result<()> {
    let knn = read_json(&run.join("knn.json"));
    let linear = read_json(&run.join("linear/metrics.json"));
    let cam = read_json(&run.join("cam/metrics.json"));
    let f = |v: &serde_json::Value| v.as_f64().map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    println!("\nsummary of {}", run.display());
    println!("| KNN top-1 | KNN top-5 | linear top-1 | linear top-5 | AD ↓ | AI ↑ |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {} |",
        f(&knn["top1"]), f(&knn["top5"]), f(&linear["top1"]), f(&linear["top5"]), f(&cam["ad"]), f(&cam["ai"])
    );
    Ok(())
}
