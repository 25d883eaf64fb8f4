//! Settings of CubeCL, the compiler and autotuner under Burn's CUDA backend: where its
//! autotune results and compiled kernels persist, and how hard it tunes.
//!
//! Cold autotuning of a ResNet-50 step took minutes at CubeCL's default level, so `sca`
//! keeps both caches in one directory (`.sca-cache/cubecl` under the working directory by
//! default, `--gpu-cache DIR` to move it or ship it with a run) and lets the level be chosen
//! (`--autotune minimal|balanced|extensive|full`). A `cubecl.toml` and `CUBECL_*`
//! variables are still read first; the flags override them.
//!
//! The same directory holds the convolution plan (`conv-plan.json`, written by
//! `sca bench convs`): which kernel each convolution pass runs. A CUDA run
//! uses the plan it finds there, or the one `--conv-plan FILE` names, else the plan shipped
//! for its card if there is one (`configs/conv-plans/`), else the built-in kernels.

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

/// The plan's file name inside the cache directory.
pub const PLAN_FILE: &str = "conv-plan.json";

/// The GPU settings from the command line, kept until a command picks CUDA.
#[derive(Clone, Debug)]
pub struct Requested {
    pub cache: PathBuf,
    pub level: Option<Autotune>,
    /// `--conv-plan`: a plan to use instead of the cache directory's.
    pub plan: Option<PathBuf>,
}

static REQUESTED: std::sync::OnceLock<Requested> = std::sync::OnceLock::new();
static INSTALLED: std::sync::Once = std::sync::Once::new();

/// Remembers `--gpu-cache` / `--autotune` / `--conv-plan`; `main` calls it before any
/// command runs.
pub fn request(requested: Requested) {
    let _ = REQUESTED.set(requested);
}

/// What was requested (the defaults when nothing was).
pub fn requested() -> Requested {
    REQUESTED.get().cloned().unwrap_or_else(|| Requested { cache: PathBuf::from(DEFAULT_CACHE_DIR), level: None, plan: None })
}

/// Installs the requested settings once, when a command has chosen CUDA (on the card the
/// driver names `gpu`) and before its first CUDA operation (CubeCL reads its configuration
/// once). CPU runs create nothing.
pub fn install_requested(gpu: Option<&str>) -> anyhow::Result<()> {
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        let r = requested();
        result = install(&r.cache, r.level).map(|_| ()).and_then(|_| install_plan(&r, gpu));
    });
    result
}

/// Convolution plans measured on a card and shipped with the binary: (the card's name as
/// the driver gives it, the file in this repository, its text).
const SHIPPED_PLANS: [(&str, &str, &str); 1] = [("NVIDIA H200", "configs/conv-plans/h200-f32.json", include_str!("../../../configs/conv-plans/h200-f32.json"))];

/// The shipped plan measured on `gpu`'s model, and its file's name.
pub fn shipped_plan(gpu: Option<&str>) -> Option<(sca_kernels::plan::ConvPlan, &'static str)> {
    let gpu = gpu?;
    let (_, file, text) = SHIPPED_PLANS.iter().find(|(card, _, _)| gpu.starts_with(card))?;
    Some((sca_kernels::plan::ConvPlan::parse(text).unwrap_or_else(|e| panic!("{file}: {e}")), file))
}

/// The convolution plan a CUDA run uses: `--conv-plan`'s (which must exist), else the cache
/// directory's if there is one, else the one shipped for the card if there is one. Says
/// which on stderr.
fn install_plan(r: &Requested, gpu: Option<&str>) -> anyhow::Result<()> {
    let Some(path) = plan_path(r) else {
        if let Some((plan, file)) = shipped_plan(gpu) {
            eprintln!("convolution kernels: plan {file}, shipped for this card ({} shapes, measured at batch {})", plan.shapes.len(), plan.batch);
            sca_kernels::plan::use_plan(plan);
            return Ok(());
        }
        use sca_kernels::plan::{ConvKernel, Pass};
        let passes: Vec<String> = Pass::ALL.iter().map(|&p| format!("{p} {}", ConvKernel::built_in(p))).collect();
        eprintln!("convolution kernels: built-in ({}; `sca bench convs` measures a plan)", passes.join(", "));
        return Ok(());
    };
    let plan = sca_kernels::plan::ConvPlan::load(&path).map_err(anyhow::Error::msg)?;
    eprintln!(
        "convolution kernels: plan {} ({} shapes, measured on {} at batch {})",
        path.display(),
        plan.shapes.len(),
        if plan.device.is_empty() { "an unnamed device" } else { &plan.device },
        plan.batch
    );
    sca_kernels::plan::use_plan(plan);
    Ok(())
}

/// `--conv-plan` if given, else `conv-plan.json` in the cache directory if it exists.
pub fn plan_path(r: &Requested) -> Option<PathBuf> {
    r.plan.clone().or_else(|| Some(r.cache.join(PLAN_FILE)).filter(|p| p.exists()))
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
    fn the_h200_gets_its_shipped_plan_and_other_cards_none() {
        let (plan, file) = shipped_plan(Some("NVIDIA H200")).expect("a plan for the H200");
        assert_eq!(file, "configs/conv-plans/h200-f32.json");
        assert_eq!(plan.shapes.len(), 23);
        assert!(plan.device.contains("H200"), "{}", plan.device);
        assert!(shipped_plan(Some("NVIDIA H200 NVL")).is_some());
        assert!(shipped_plan(Some("NVIDIA H100 80GB HBM3")).is_none());
        assert!(shipped_plan(None).is_none());
    }

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

    #[test]
    fn the_plan_comes_from_the_flag_else_from_the_cache_directory_if_there() {
        let dir = tempfile::tempdir().unwrap();
        let r = |plan: Option<&str>| Requested { cache: dir.path().to_path_buf(), level: None, plan: plan.map(PathBuf::from) };
        assert_eq!(plan_path(&r(None)), None);
        std::fs::write(dir.path().join(PLAN_FILE), "{}").unwrap();
        assert_eq!(plan_path(&r(None)), Some(dir.path().join(PLAN_FILE)));
        assert_eq!(plan_path(&r(Some("/elsewhere/p.json"))), Some(PathBuf::from("/elsewhere/p.json")));
        // A named plan that is missing is an error naming it, not a silent default (not
        // even the plan shipped for the card).
        let err = install_plan(&r(Some("/elsewhere/p.json")), Some("NVIDIA H200")).unwrap_err().to_string();
        assert!(err.contains("/elsewhere/p.json"), "{err}");
    }
}
