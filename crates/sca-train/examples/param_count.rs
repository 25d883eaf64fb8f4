//! Trainable parameters of the model a config builds, and the gradient bytes every replica
//! sums per step (f32): `cargo run --release -p sca-train --example param_count -- configs/imagenet1k-swav.json`.

use burn::backend::flex::FlexDevice;
use burn::backend::Flex;
use burn::module::Module;
use sca_train::model::SslModel;

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| "configs/imagenet1k-swav.json".into());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let cfg = sca_train::config::parse(&text, &path, &[]).unwrap_or_else(|e| panic!("{e}"));
    let model = SslModel::<Flex>::new(&cfg, &FlexDevice);
    let backbone = model.backbone.num_params();
    let addon = model.addon.as_ref().map_or(0, |a| a.num_params());
    let total = model.num_params();
    // `num_params` counts trainable parameters (BN running statistics are not among them:
    // the ResNet-50 backbone gives torchvision's 23,508,032 without `fc`).
    println!("{path}: backbone {backbone}, add-on {addon}, whole model {total} trainable parameters");
    println!("gradient bytes every replica sums per step (f32): {:.1} MB", total as f64 * 4.0 / 1e6);
}
