//! `sca check-device`: a short training run on the GPU and on the CPU from one start,
//! compared (`sca_train::parity`), so a new card, driver or build shows whether it computes
//! what the CPU computes before hours go into a run.

use std::path::PathBuf;
use std::sync::Arc;

use sca_data::scenes::{Scenes, Split};
use sca_train::parity::Tolerances;

use crate::device::{Choice, DeviceArg};
use crate::files;

#[derive(clap::Args)]
pub struct Args {
    /// The GPU to check (`cuda`, `cuda:N`; `auto` picks the first GPU).
    #[arg(long, default_value = "auto")]
    device: DeviceArg,
    /// Image size of the run (ResNet-50, two epochs of 8 images in batches of 4). At 48 px
    /// the stages' rows are 12, 6 and 3 pixels, which CUDA pads in NCHW tensors.
    #[arg(long, default_value_t = 48, value_parser = crate::cmd::bench::at_least_one)]
    size: usize,
    /// Arithmetic of the convolutions on both sides: f32 (TF32 tensor cores on the GPU),
    /// bf16 or f16 (f32 master weights; f16 with loss scaling), to check the mixed-precision
    /// path as well.
    #[arg(long, default_value = "f32")]
    precision: sca_backbone::Precision,
    /// The largest relative difference accepted in each loss term of each step and in the
    /// pooled features.
    #[arg(long, default_value_t = Tolerances::GPU.loss)]
    tolerance: f64,
    /// The largest median over the backbone tensors of `‖GPU − CPU‖ / ‖CPU − start‖` (an
    /// error in a kernel that most layers use raises it; on the CPU, convolutions rounded to
    /// TF32's mantissa leave it at about 4e-5).
    #[arg(long, default_value_t = Tolerances::GPU.update_median)]
    update_median: f64,
    /// The largest such update error of any one tensor (a scrambled weight gives 1 or more;
    /// rounding to TF32's mantissa moves a few sensitive ones, the stem's batch norm first,
    /// by about 0.1).
    #[arg(long, default_value_t = Tolerances::GPU.update_worst)]
    update_worst: f64,
    /// Also write the comparison here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let choice = args.device.resolve_and_report()?;
    if choice == Choice::Cpu {
        anyhow::bail!(match args.device {
            DeviceArg::Auto => "check-device compares a GPU with the CPU, and --device auto found no NVIDIA driver (libcuda): nothing to compare",
            _ => "check-device compares a GPU with the CPU; --device cpu leaves nothing to compare (name a GPU: --device cuda)",
        });
    }
    let size = args.size;
    let mut overrides = sca_train::parity::check_overrides(size);
    overrides.push(format!("precision={}", args.precision));
    let cfg = sca_train::config::parse(crate::cmd::pretrain::DEFAULT_CONFIG, "configs/default.json (built in)", &overrides)?;
    let data = Arc::new(Scenes::new(size, 3, 8, 0, Split::Train)?);
    eprintln!("training ResNet-50 at {size} px for 4 steps ({} convolutions) on the GPU and on the CPU from one start ...", args.precision);
    let parity = crate::with_backend!(choice, |B, device| sca_train::parity::compare_with_cpu::<B>(cfg, data, device)?);

    println!("{:>6} {:<14} {:>14} {:>14} {:>12}", "step", "loss", "GPU", "CPU", "rel. diff");
    for s in &parity.steps {
        for t in &s.terms {
            println!("{:>6} {:<14} {:>14.6} {:>14.6} {:>12.2e}", s.step, t.term, t.device, t.cpu, t.relative());
        }
    }
    println!("\nbackbone tensors whose update differs most from the CPU's (‖GPU − CPU‖ / ‖CPU − start‖):");
    for t in parity.tensors.iter().take(5) {
        println!("  {:<40} {:>10.2e}", t.name, t.update_error);
    }
    println!("  median over {} tensors{:>24.2e}", parity.tensors.len(), parity.median_update_error());
    println!("pooled features of a fixed batch: relative difference {:.2e}", parity.features);
    println!("top-k selection: {} entries differ from the CPU's", parity.top_k_mismatches);
    let tol = Tolerances { loss: args.tolerance, update_median: args.update_median, update_worst: args.update_worst };
    if let Some(path) = &args.json {
        let doc = serde_json::json!({ "device": choice.to_string(), "precision": args.precision.to_string(), "tolerances": tol, "median_update_error": parity.median_update_error(), "parity": parity });
        files::write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    }
    let failures = parity.failures(&tol);
    let said = format!("losses and features {}, median update {}, worst update {}", tol.loss, tol.update_median, tol.update_worst);
    if !failures.is_empty() {
        anyhow::bail!("the GPU does not compute what the CPU computes (tolerances: {said}):\n  {}", failures.join("\n  "));
    }
    println!("\nthe GPU agrees with the CPU (tolerances: {said})");
    Ok(())
}
