//! `sca export`: a pretrained backbone for torchvision and Detectron2.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sca_export::{Arch, Format};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["run", "weights"])))]
pub struct Args {
    /// Run directory: reads RUN/backbone.safetensors and writes RUN/export/ (unless --out).
    #[arg(long, value_name = "DIR")]
    run: Option<PathBuf>,
    /// A backbone safetensors file in torchvision naming (e.g. from `sca weights --save`).
    #[arg(long, value_name = "FILE", requires = "out")]
    weights: Option<PathBuf>,
    /// The architecture the weights must be; by default it is read from the keys.
    #[arg(long, value_parser = |s: &str| s.parse::<Arch>())]
    arch: Option<Arch>,
    /// What to write.
    #[arg(long, value_enum, default_value_t = FormatArg::All)]
    format: FormatArg,
    /// Output directory (default RUN/export).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    /// backbone_torchvision.safetensors
    Torchvision,
    /// backbone_detectron2.pkl and detectron2/ configs
    Detectron2,
    /// both
    All,
}

pub fn run(args: Args) -> Result<()> {
    let (source, out) = match (&args.run, &args.weights) {
        (Some(run), _) => (
            run.join("backbone.safetensors"),
            args.out.clone().unwrap_or_else(|| run.join("export")),
        ),
        (None, Some(weights)) => (
            weights.clone(),
            args.out.clone().context("--weights needs --out")?,
        ),
        (None, None) => unreachable!("clap requires --run or --weights"),
    };
    let bytes = std::fs::read(&source).with_context(|| {
        let hint = if args.run.is_some() {
            " (has pretraining saved the backbone?)"
        } else {
            ""
        };
        format!("cannot read {}{hint}", source.display())
    })?;
    // Absolute, because Detectron2 resolves MODEL.WEIGHTS against its own working directory.
    let out =
        std::path::absolute(&out).with_context(|| format!("cannot resolve {}", out.display()))?;
    let format = match args.format {
        FormatArg::Torchvision => Format::Torchvision,
        FormatArg::Detectron2 => Format::Detectron2,
        FormatArg::All => Format::All,
    };
    // Everything is built in memory first, so a bad input writes no file at all.
    let export = sca_export::export(&bytes, format, args.arch, &out)
        .with_context(|| source.display().to_string())?;
    println!("{} backbone from {}", export.arch, source.display());
    for file in &export.files {
        let path = out.join(&file.path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        sca_export::write_atomic(&path, &file.bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!(
            "  wrote {} ({})",
            path.display(),
            human_size(file.bytes.len())
        );
    }
    for note in &export.notes {
        println!("  note: {note}");
    }
    let readme = Path::new(sca_export::DETECTRON2_DIR).join("README.md");
    if export.files.iter().any(|f| f.path == readme) {
        println!("  detection: see {}", out.join(&readme).display());
    }
    Ok(())
}

fn human_size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / (1 << 10) as f64),
        b => format!("{b} B"),
    }
}
