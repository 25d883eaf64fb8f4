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

/// `cargo xtask <stage> ARGS` = `sca <stage> ARGS` on a fresh release build.
pub fn stage(sh: &Shell, stage: &str, a: StageArgs) -> anyhow::Result<()> {
    let sca = build(sh)?;
    let args = a.args;
    cmd!(sh, "{sca} {stage} {args...}").run()?;
    Ok(())
}

/// `bench data ...` is `sca data bench ...`; every other benchmark is `sca bench <what> ...`.
pub fn bench(sh: &Shell, a: StageArgs) -> anyhow::Result<()> {
    let sca = build(sh)?;
    let mut args = a.args;
    if args.first().map(String::as_str) == Some("data") {
        args.remove(0);
        cmd!(sh, "{sca} data bench {args...}").run()?;
    } else {
        cmd!(sh, "{sca} bench {args...}").run()?;
    }
    Ok(())
}
