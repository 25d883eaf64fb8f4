//! Checkpoint files inside a run directory. `checkpoints/latest.ckpt` is replaced through
//! a temporary file; the one it replaces becomes `previous.ckpt`, and every N epochs a
//! numbered copy `epoch-NNNN.ckpt` is kept. Loading falls back through them in that order
//! when a file is truncated or corrupt.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::files;

fn ckpt_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

pub fn latest_checkpoint_exists(run: &Path) -> bool {
    ckpt_dir(run).join("latest.ckpt").exists()
}

pub fn save_checkpoint(run: &Path, bytes: &[u8], keep_epoch: Option<usize>) -> anyhow::Result<()> {
    let dir = ckpt_dir(run);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let latest = dir.join("latest.ckpt");
    let tmp = dir.join(".latest.ckpt.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    if latest.exists() {
        std::fs::rename(&latest, dir.join("previous.ckpt")).context("keeping the previous checkpoint")?;
    }
    std::fs::rename(&tmp, &latest).with_context(|| format!("renaming to {}", latest.display()))?;
    if let Some(epoch) = keep_epoch {
        files::write_atomic(&dir.join(format!("epoch-{epoch:04}.ckpt")), bytes)?;
    }
    Ok(())
}

/// Candidates in the order they are tried: latest, previous, numbered copies newest first.
fn candidates(run: &Path) -> Vec<PathBuf> {
    let dir = ckpt_dir(run);
    let mut numbered: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("epoch-") && n.ends_with(".ckpt")))
        .collect();
    numbered.sort();
    numbered.reverse();
    let mut out = vec![dir.join("latest.ckpt"), dir.join("previous.ckpt"), dir.join(".latest.ckpt.tmp")];
    out.extend(numbered);
    out
}

/// The first intact checkpoint; every damaged one is reported on stderr.
pub fn load_checkpoint(run: &Path, check: impl Fn(&[u8]) -> Result<(), String>) -> anyhow::Result<(PathBuf, Vec<u8>)> {
    if !run.is_dir() {
        bail!("run directory {} does not exist", run.display());
    }
    for path in candidates(run) {
        let Ok(bytes) = std::fs::read(&path) else { continue };
        match check(&bytes) {
            Ok(()) => return Ok((path, bytes)),
            Err(e) => eprintln!("warning: checkpoint {} is damaged ({e}); trying an older one", path.display()),
        }
    }
    bail!("no intact checkpoint in {}", ckpt_dir(run).display())
}
