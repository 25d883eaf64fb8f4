//! `cargo xtask test`: the CI test run.

use xshell::{cmd, Shell};

pub fn run(sh: &Shell) -> anyhow::Result<()> {
    cmd!(sh, "cargo test --workspace --no-fail-fast").run()?;
    Ok(())
}
