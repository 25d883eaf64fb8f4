//! Building and calling the `sca` binary.

use xshell::{cmd, Shell};

#[derive(clap::Args)]
pub struct StageArgs {
    /// Arguments passed to the `sca` subcommand unchanged.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Builds `sca` in release mode and returns its path.
pub fn build(sh: &Shell) -> anyhow::Result<String> {
    cmd!(sh, "cargo build --release --package sca-cli --bin sca").run()?;
    Ok("target/release/sca".to_string())
}

/// `cargo xtask <stage> ARGS` = `sca <stage> ARGS` on a fresh release build. Evaluation
/// stages given neither `--run` nor `--weights` use the newest finished run under `runs/`.
pub fn stage(sh: &Shell, stage: &str, a: StageArgs) -> anyhow::Result<()> {
    let sca = build(sh)?;
    let mut args = a.args;
    let names_source = args.iter().any(|x| x == "--run" || x == "--weights" || x.starts_with("--run=") || x.starts_with("--weights="));
    if stage != "pretrain" && !names_source && !args.iter().any(|x| x == "--help" || x == "-h") {
        let run = newest_run(std::path::Path::new("runs"))
            .ok_or_else(|| anyhow::anyhow!("no finished run under runs/ (run `cargo xtask pretrain` first, or pass --run DIR)"))?;
        eprintln!("using the newest run: {}", run.display());
        args.splice(0..0, ["--run".to_string(), run.display().to_string()]);
    }
    cmd!(sh, "{sca} {stage} {args...}").run()?;
    Ok(())
}

/// `bench data ...` is `sca data bench ...`; every other benchmark is `sca bench <what> ...`.
pub fn bench(sh: &Shell, a: StageArgs) -> anyhow::Result<()> {
    let mut args = a.args;
    if args.first().map(String::as_str) == Some("launches") {
        // Kernel launches per training step, counted on wgpu (Mesa's lavapipe will do).
        args.remove(0);
        cmd!(sh, "cargo run --release -p sca-train --example launch_count -- {args...}").run()?;
        return Ok(());
    }
    let sca = build(sh)?;
    if args.first().map(String::as_str) == Some("data") {
        args.remove(0);
        cmd!(sh, "{sca} data bench {args...}").run()?;
    } else {
        cmd!(sh, "{sca} bench {args...}").run()?;
    }
    Ok(())
}

/// The most recently finished run (newest `backbone.safetensors`) under `root`, searched
/// three levels deep (ablation runs sit in `runs/ablation/<dataset>/<method>`).
pub fn newest_run(root: &std::path::Path) -> Option<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, depth: usize, best: &mut Option<(std::time::SystemTime, std::path::PathBuf)>) {
        if let Ok(m) = std::fs::metadata(dir.join("backbone.safetensors")).and_then(|m| m.modified()) {
            if best.as_ref().is_none_or(|(t, _)| m > *t) {
                *best = Some((m, dir.to_path_buf()));
            }
        }
        if depth == 0 {
            return;
        }
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&entry.path(), depth - 1, best);
            }
        }
    }
    let mut best = None;
    walk(root, 3, &mut best);
    best.map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::newest_run;

    #[test]
    fn newest_run_picks_the_latest_finished_backbone() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        assert_eq!(newest_run(root), None);
        let (old, new, unfinished) = (root.join("a"), root.join("ablation/builtin/b"), root.join("c"));
        for d in [&old, &new, &unfinished] {
            std::fs::create_dir_all(d).unwrap();
        }
        let write_at = |dir: &std::path::Path, secs: u64| {
            let f = std::fs::File::create(dir.join("backbone.safetensors")).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).unwrap();
        };
        write_at(&new, 2_000_000_000);
        write_at(&old, 1_000_000_000);
        std::fs::write(unfinished.join("config.json"), b"{}").unwrap();
        assert_eq!(newest_run(root), Some(new));
    }
}
