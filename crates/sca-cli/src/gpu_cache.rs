//! Settings of CubeCL, the compiler and autotuner under Burn's CUDA backend: where its
//! autotune results and compiled kernels persist, and how hard it tunes.
//!
//! Cold autotuning of a ResNet-50 step took minutes at CubeCL's default level, so `sca`
//! keeps both caches in one directory (`.sca-cache/cubecl` under the working directory by
//! default, `--gpu-cache DIR` to move it or ship it with a run) and lets the level be chosen
//! (`--autotune minimal|balanced|extensive|full`). A `cubecl.toml` and `CUBECL_*`
//! variables are still read first; the flags override them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cubecl_runtime::config::autotune::AutotuneLevel;
use cubecl_runtime::config::cache::CacheConfig;
use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};

pub const DEFAULT_CACHE_DIR: &str = ".sca-cache/cubecl";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Autotune {
    Minimal,
    Balanced,
    Extensive,
    Full,
}

/// `base` with both caches under `cache` (autotune results in `autotune/`, compiled
/// kernels in `kernels/`) and, when given, the autotune level.
pub fn runtime_config(base: CubeClRuntimeConfig, cache: &Path, level: Option<Autotune>) -> CubeClRuntimeConfig {
    let mut c = base;
    c.autotune.cache = CacheConfig::File(cache.join("autotune"));
    c.compilation.cache = Some(CacheConfig::File(cache.join("kernels")));
    if let Some(level) = level {
        c.autotune.level = match level {
            Autotune::Minimal => AutotuneLevel::Minimal,
            Autotune::Balanced => AutotuneLevel::Balanced,
            Autotune::Extensive => AutotuneLevel::Extensive,
            Autotune::Full => AutotuneLevel::Full,
        };
    }
    c
}

/// The flags from the command line, kept until a command picks CUDA.
static REQUESTED: std::sync::OnceLock<(PathBuf, Option<Autotune>)> = std::sync::OnceLock::new();
static INSTALLED: std::sync::Once = std::sync::Once::new();

/// Remembers `--gpu-cache` / `--autotune`; `main` calls it before any command runs.
pub fn request(cache: PathBuf, level: Option<Autotune>) {
    let _ = REQUESTED.set((cache, level));
}

/// Installs the requested settings once, when a command has chosen CUDA and before its
/// first CUDA operation (CubeCL reads its configuration once). CPU runs create nothing.
pub fn install_requested() -> anyhow::Result<()> {
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        let (cache, level) = REQUESTED.get().cloned().unwrap_or_else(|| (PathBuf::from(DEFAULT_CACHE_DIR), None));
        result = install(&cache, level).map(|_| ());
    });
    result
}

fn install(cache: &Path, level: Option<Autotune>) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(cache).with_context(|| format!("creating the GPU cache directory {}", cache.display()))?;
    let cache = std::path::absolute(cache).with_context(|| format!("resolving {}", cache.display()))?;
    let base = CubeClRuntimeConfig::from_current_dir().override_from_env();
    CubeClRuntimeConfig::set(runtime_config(base, &cache, level));
    Ok(cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_go_under_the_chosen_directory_and_the_level_is_applied() {
        let c = runtime_config(CubeClRuntimeConfig::default(), Path::new("/tmp/x"), Some(Autotune::Minimal));
        assert_eq!(c.autotune.cache.root(), PathBuf::from("/tmp/x/autotune"));
        assert_eq!(c.compilation.cache.as_ref().map(|c| c.root()), Some(PathBuf::from("/tmp/x/kernels")));
        assert!(matches!(c.autotune.level, AutotuneLevel::Minimal));
        // Without a level, the base configuration's level stays.
        let mut base = CubeClRuntimeConfig::default();
        base.autotune.level = AutotuneLevel::Full;
        assert!(matches!(runtime_config(base, Path::new("/tmp/x"), None).autotune.level, AutotuneLevel::Full));
    }
}
