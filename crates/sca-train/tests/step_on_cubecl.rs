//! Whole training runs on a CubeCL backend, against the same runs on the CPU.
//!
//! The CUDA backend shares its code with every CubeCL runtime, and some of Burn's operations
//! behave differently there than on the CPU backend (bilinear `interpolate` has no backward;
//! `topk` and `sort` go through the host; `cumsum` is quadratic). This runs the pretraining
//! loop (backbone, SwAV with its queue, the add-on with the multi-stage tap, the epoch-start
//! feature pass and k-means, LARS) on wgpu over Mesa's software Vulkan (lavapipe), with the
//! convolutions and matmuls on this project's explicit kernels as on CUDA, from the same
//! start and on the same batches as on Flex, and the two must agree (`sca_train::parity`:
//! loss terms, weight updates, features, top-k); then one epoch of ResNet-50 with
//! channels-last activations (`model.channels_last`), the run `sca check-device` compares.
//! Skipped without Vulkan unless `SCA_REQUIRE_VULKAN` is set (CI sets it).

use std::sync::Arc;

use burn::backend::Autodiff;
use sca_data::scenes::{Scenes, Split};
use sca_data::Dataset;
use sca_kernels::plan::{use_plan, ConvPlan};
use sca_kernels::WgpuBackend;
use sca_train::parity::{compare_with_cpu, Parity, Tolerances};
use sca_train::TrainConfig;

type Gpu = Autodiff<WgpuBackend>;

const DEFAULT: &str = include_str!("../../../configs/default.json");

fn config() -> TrainConfig {
    let o: Vec<String> = [
        "epochs=2", "batch_size=4", "model.small_stem=true", "model.conv=gemm", "data.image_size=16", "data.train_size=8",
        "data.augment.crops=[{\"count\":2,\"size\":16,\"min_scale\":0.3,\"max_scale\":1.0}]",
        "engine.queue_length=16", "engine.freeze_prototypes_steps=1",
        "addon.clusters=3", "addon.kmeans_iterations=3", "addon.tap=\"multi\"", "eval.knn_every=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sca_train::config::parse(DEFAULT, "default.json", &o).unwrap()
}

fn data() -> Arc<dyn Dataset> {
    Arc::new(Scenes::new(16, 3, 8, 0, Split::Train).unwrap())
}

#[test]
fn a_run_on_cubecl_gives_the_cpu_runs_losses() {
    let Some(device) = sca_kernels::cubecl_test_device::<WgpuBackend>() else { return };
    // lavapipe has no cooperative-matrix unit, so cubek's implicit-GEMM kernels refuse every
    // shape there: every pass of every convolution on the `matmul` kernel (im2col and cubek's
    // tiled matmul), as a plan for the card would name it.
    let all = r#"{"forward": "matmul", "data": "matmul", "weight": "matmul"}"#;
    use_plan(ConvPlan::parse(&format!(r#"{{"device": "lavapipe", "batch": 4, "default": {all}, "shapes": {{}}}}"#)).unwrap());

    // NCHW activations first (channels-last is the default).
    let mut nchw = config();
    nchw.model.channels_last = false;
    let parity = agrees(nchw, device.clone());
    assert_eq!(parity.steps.len(), 4, "2 epochs of 8 images in batches of 4");

    // Channels-last activations: ResNet-50 with its full stem, whose max pool hands on
    // channels-last memory; from there every convolution runs on rows of channels and
    // leaves its result channels-last, batch norm runs its channels-last kernels both ways,
    // and the residual ends meet both layouts. This is the run `sca check-device` compares
    // on a GPU (one epoch of it here), through the same comparison.
    let mut o = sca_train::parity::check_overrides(16);
    o.push("model.conv=gemm".into());
    let mut cfg = sca_train::config::parse(DEFAULT, "default.json", &o).unwrap();
    cfg.epochs = 1;
    assert!(cfg.model.channels_last);
    let parity = agrees(cfg, device);
    assert_eq!(parity.steps.len(), 2, "1 epoch of 8 images in batches of 4");
    assert_eq!(parity.tensors.len(), 53 * 5, "53 convolution weights and 53 batch norms of four tensors (their batch counters left out)");
}

/// Trains `cfg` on Flex and on wgpu from the same start (`sca_train::parity`) and asserts
/// that they agree to 1e-3: every loss term of every step (the add-on's among them from the
/// first epoch's clustering on), every backbone tensor's update, the pooled features and a
/// top-k selection.
fn agrees(cfg: TrainConfig, device: burn::tensor::Device<WgpuBackend>) -> Parity {
    let parity = compare_with_cpu::<Gpu>(cfg, data(), device).unwrap();
    for s in &parity.steps {
        let terms: Vec<String> = s.terms.iter().map(|t| format!("{} {} (cpu {})", t.term, t.device, t.cpu)).collect();
        eprintln!("step {}: {}", s.step, terms.join(", "));
    }
    for t in parity.tensors.iter().take(5) {
        eprintln!("{}: update error {:.2e}", t.name, t.update_error);
    }
    eprintln!("features {:.2e}, top-k mismatches {}", parity.features, parity.top_k_mismatches);
    assert!(parity.steps.iter().all(|s| s.terms.len() == 4), "the add-on runs from the first epoch's clustering on");
    let failures = parity.failures(&Tolerances::all(1e-3));
    assert!(failures.is_empty(), "wgpu against the CPU:\n{}", failures.join("\n"));
    parity
}
