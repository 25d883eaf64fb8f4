//! `sca info`: parameter count and stage output shapes of a backbone.

use burn::tensor::Tensor;
use sca_backbone::{Arch, ResNetConfig};

use crate::device::CpuBackend;

#[derive(clap::Args)]
pub struct Args {
    /// resnet18, resnet34 or resnet50.
    #[arg(long, default_value = "resnet50")]
    pub arch: Arch,
    /// Input side in pixels.
    #[arg(long, default_value_t = 224)]
    pub input: usize,
    /// CIFAR-style stem (3×3 stride-1 conv, no max-pool) for 28-64 px inputs.
    #[arg(long)]
    pub small_stem: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = Default::default();
    // Counted with torchvision's 1000-class fc so the figure compares with torchvision's.
    let model = ResNetConfig::new(args.arch)
        .with_small_stem(args.small_stem)
        .with_num_classes(Some(1000))
        .init::<CpuBackend>(&device);
    let total = model.num_params();
    let fc = args.arch.feature_dim() * 1000 + 1000;
    println!("{} ({} stem)", args.arch, if args.small_stem { "small-image" } else { "ImageNet" });
    println!("parameters: {total} (with a 1000-class fc; backbone alone {})", total - fc);
    println!("feature dim: {}", args.arch.feature_dim());
    let x = Tensor::<CpuBackend, 4>::zeros([1, 3, args.input, args.input], &device);
    let stages = model.forward_stages(x).to_array();
    println!("input: [1, 3, {0}, {0}]", args.input);
    for (i, s) in stages.iter().enumerate() {
        println!("layer{} output: {:?}", i + 1, s.dims());
    }
    Ok(())
}
