//! `sca weights`: create or load backbone weights and save them as torchvision-named
//! safetensors (the round trip between this project and PyTorch).

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::tensor::backend::Backend;
use sca_backbone::{Arch, ResNet, ResNetConfig};

use crate::device::CpuBackend;
use crate::files;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "resnet50")]
    pub arch: Arch,
    /// `random` for a fresh initialisation, or a `.safetensors` file with torchvision keys.
    #[arg(long, default_value = "random")]
    pub init: String,
    /// Where to write the weights.
    #[arg(long)]
    pub save: PathBuf,
    #[arg(long)]
    pub small_stem: bool,
    /// Classes of the fc layer; 0 writes the backbone without fc.
    #[arg(long, default_value_t = 1000)]
    pub num_classes: usize,
    /// Seed for `--init random`.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = Default::default();
    CpuBackend::seed(&device, args.seed);
    let model = ResNetConfig::new(args.arch)
        .with_small_stem(args.small_stem)
        .with_num_classes((args.num_classes > 0).then_some(args.num_classes))
        .init::<CpuBackend>(&device);
    let model = if args.init == "random" { model } else { load_backbone(model, Path::new(&args.init))? };
    files::write_atomic(&args.save, &model.to_safetensors())?;
    println!("wrote {} ({}, {} parameters)", args.save.display(), args.arch, model.num_params());
    Ok(())
}

/// Loads torchvision-named weights into `model`, saying which keys were skipped.
pub fn load_backbone<B: Backend>(model: ResNet<B>, path: &Path) -> anyhow::Result<ResNet<B>> {
    let (model, report) = model.load_safetensors(&files::read(path)?).with_context(|| format!("loading {}", path.display()))?;
    let counters = report.ignored.iter().filter(|k| k.ends_with("num_batches_tracked")).count();
    let other: Vec<&str> = report.ignored.iter().filter(|k| !k.ends_with("num_batches_tracked")).map(|k| k.as_str()).collect();
    if !other.is_empty() {
        eprintln!("{}: ignored {} (not part of this model){}", path.display(), other.join(", "),
            if counters > 0 { format!(" and {counters} BN counters") } else { String::new() });
    }
    Ok(model)
}
