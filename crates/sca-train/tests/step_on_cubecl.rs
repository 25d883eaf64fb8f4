//! Whole training runs on a CubeCL backend, against the same runs on the CPU.
//!
//! The CUDA backend shares its code with every CubeCL runtime, and some of Burn's operations
//! behave differently there than on the CPU backend (bilinear `interpolate` has no backward;
//! `topk` and `sort` go through the host; `cumsum` is quadratic). This runs the pretraining
//! loop (backbone, SwAV with its queue, the add-on with the multi-stage tap, the epoch-start
//! feature pass and k-means, LARS) on wgpu over Mesa's software Vulkan (lavapipe), with the
//! convolutions and matmuls on this project's explicit kernels as on CUDA, from the same
//! start and on the same batches as on Flex, and the losses must agree; then one epoch of
//! ResNet-50 with channels-last activations (`model.channels_last`).
//! Skipped without Vulkan unless `SCA_REQUIRE_VULKAN` is set (CI sets it).

use std::sync::Arc;

use burn::backend::flex::FlexDevice;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use sca_data::scenes::{Scenes, Split};
use sca_data::Dataset;
use sca_kernels::plan::{use_plan, ConvPlan};
use sca_kernels::WgpuBackend;
use sca_train::{Observer, RunEnd, StepMetrics, TrainConfig, Trainer};

type Cpu = Autodiff<Flex>;
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

#[derive(Default)]
struct Log(Vec<StepMetrics>);

impl Observer for Log {
    fn step(&mut self, m: &StepMetrics) {
        self.0.push(m.clone());
    }
    fn checkpoint(&mut self, _: Vec<u8>, _: Option<usize>) -> Result<(), String> {
        Ok(())
    }
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
    let got = same_losses(nchw, device.clone());
    assert_eq!(got, 4, "2 epochs of 8 images in batches of 4");

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
    let parity = sca_train::parity::compare_with_cpu::<Gpu>(cfg, data(), device).unwrap();
    assert_eq!(parity.steps.len(), 2, "1 epoch of 8 images in batches of 4");
    for s in &parity.steps {
        eprintln!("step {}: loss {} (cpu {})", s.step, s.device, s.cpu);
    }
    for t in parity.tensors.iter().take(5) {
        eprintln!("{}: update error {:.2e}", t.name, t.update_error);
    }
    eprintln!("features {:.2e}, top-k mismatches {}", parity.features, parity.top_k_mismatches);
    assert_eq!(parity.tensors.len(), 53 * 5, "53 convolution weights and 53 batch norms of four tensors (their batch counters left out)");
    let failures = parity.failures(1e-3);
    assert!(failures.is_empty(), "wgpu against the CPU:\n{}", failures.join("\n"));
}

/// Trains `cfg` on Flex and on wgpu from the same start, asserts that every step's loss
/// terms agree to 1e-3, and returns the number of steps.
fn same_losses(cfg: TrainConfig, device: burn::tensor::Device<WgpuBackend>) -> usize {
    Cpu::seed(&FlexDevice, 5);
    let start = Trainer::<Cpu>::new(cfg.clone(), data(), None, FlexDevice).checkpoint_bytes();
    let mut cpu = Trainer::<Cpu>::new(cfg.clone(), data(), None, FlexDevice);
    cpu.restore(&start).unwrap();
    let mut want = Log::default();
    assert_eq!(cpu.run(&mut want).unwrap(), RunEnd::Finished);

    let mut gpu = Trainer::<Gpu>::new(cfg, data(), None, device);
    gpu.restore(&start).unwrap();
    let mut got = Log::default();
    assert_eq!(gpu.run(&mut got).unwrap(), RunEnd::Finished);

    assert_eq!(got.0.len(), want.0.len());
    assert!(got.0.iter().all(|m| m.loss_mu.is_some() && m.loss_cls.is_some()), "the add-on runs from the first epoch's clustering on");
    for (g, w) in got.0.iter().zip(&want.0) {
        eprintln!("step {}: loss {} (cpu {}), ssl {} ({})", g.step, g.loss, w.loss, g.loss_ssl, w.loss_ssl);
        assert_eq!(g.loss_mu.is_some(), w.loss_mu.is_some(), "step {}: the add-on ran on one side only", g.step);
        let addon = [("mu", g.loss_mu, w.loss_mu), ("cls", g.loss_cls, w.loss_cls)].map(|(t, g, w)| (t, g.unwrap_or(0.0), w.unwrap_or(0.0)));
        for (term, got, want) in [("total", g.loss, w.loss), ("ssl", g.loss_ssl, w.loss_ssl)].into_iter().chain(addon) {
            let rel = (got - want).abs() / want.abs().max(1e-6);
            assert!(rel < 1e-3, "step {}: {term} loss {got} on wgpu against {want} on the CPU", g.step);
        }
    }
    got.0.len()
}
