//! The same short training run on a device and on the CPU, compared: does the device compute
//! what the CPU computes?
//!
//! The CPU's Flex backend is the reference the tests check everything against; a GPU runs
//! this project's own kernels and CubeCL's runtime, which differ by card and driver (on
//! CUDA, for one, new tensors get padded rows that wgpu and the CPU never give). From one
//! start and on the same batches, both train `cfg` to its end; then the report holds every
//! step's loss on both, how far each backbone tensor ended from the CPU's relative to how
//! far the CPU's moved from the start (a wrong gradient or a scrambled update gives about 1
//! or more; TF32 rounding in the convolutions about 1e-3), the pooled features of a fixed
//! batch through both trained backbones (inference-mode batch norm), and a top-k selection
//! on the device against a sort.

use std::sync::Arc;

use burn::backend::flex::FlexDevice;
use burn::backend::{Autodiff, Flex};
use burn::tensor::TensorData;
use sca_data::{Dataset, ImageBatch};
use sca_dist::TrackedSum;
use serde::Serialize;

use crate::{Observer, RunEnd, StepMetrics, TrainConfig, TrainError, Trainer};

type Cpu = Autodiff<Flex>;

/// One loss term of one step on the device and on the CPU.
#[derive(Clone, Debug, Serialize)]
pub struct TermParity {
    /// `total`, `ssl`, `attention_mse` or `cluster_ce`.
    pub term: &'static str,
    pub device: f64,
    pub cpu: f64,
}

impl TermParity {
    /// `|device − cpu| / |cpu|`.
    pub fn relative(&self) -> f64 {
        (self.device - self.cpu).abs() / self.cpu.abs().max(1e-6)
    }
}

/// One step's loss terms on the device and on the CPU (the add-on's where either ran it).
#[derive(Clone, Debug, Serialize)]
pub struct StepParity {
    pub step: usize,
    /// `total` first.
    pub terms: Vec<TermParity>,
}

impl StepParity {
    fn of(device: &StepMetrics, cpu: &StepMetrics) -> StepParity {
        let both = [("total", Some(device.loss), Some(cpu.loss)), ("ssl", Some(device.loss_ssl), Some(cpu.loss_ssl))];
        let addon = [("attention_mse", device.loss_mu, cpu.loss_mu), ("cluster_ce", device.loss_cls, cpu.loss_cls)];
        let terms = both
            .into_iter()
            .chain(addon)
            .filter(|(_, d, c)| d.is_some() || c.is_some())
            // A term on one side only compares against NaN, which no tolerance accepts.
            .map(|(term, d, c)| TermParity { term, device: d.unwrap_or(f64::NAN), cpu: c.unwrap_or(f64::NAN) })
            .collect();
        StepParity { step: device.step, terms }
    }
}

/// One backbone tensor after the run: `‖device − cpu‖ / ‖cpu − start‖` (its update's error).
#[derive(Clone, Debug, Serialize)]
pub struct TensorParity {
    pub name: String,
    pub update_error: f64,
}

/// What [`compare_with_cpu`] found.
#[derive(Clone, Debug, Serialize)]
pub struct Parity {
    pub steps: Vec<StepParity>,
    /// Worst first.
    pub tensors: Vec<TensorParity>,
    /// `‖f_device − f_cpu‖ / ‖f_cpu‖` over the pooled features of a fixed batch.
    pub features: f64,
    /// Entries of a top-k selection on the device that differ from the CPU's.
    pub top_k_mismatches: usize,
}

impl Parity {
    /// What exceeds `tolerance` (loss, update or feature difference; any top-k mismatch),
    /// one line each; empty when the device agrees.
    pub fn failures(&self, tolerance: f64) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.steps {
            for t in s.terms.iter().filter(|t| !within(t.relative(), tolerance)) {
                out.push(format!("step {}: {} loss {} on the device, {} on the CPU (relative difference {:.2e})", s.step, t.term, t.device, t.cpu, t.relative()));
            }
        }
        for t in self.tensors.iter().filter(|t| !within(t.update_error, tolerance)) {
            out.push(format!("{}: its update is off by {:.2e} of the CPU's", t.name, t.update_error));
        }
        if !within(self.features, tolerance) {
            out.push(format!("pooled features differ by {:.2e} (relative)", self.features));
        }
        if self.top_k_mismatches > 0 {
            out.push(format!("top-k: {} entries differ from a sort", self.top_k_mismatches));
        }
        out
    }
}

/// Whether `x` is at most `tolerance`; a NaN (a term on one side only, a non-finite
/// result) never is.
fn within(x: f64, tolerance: f64) -> bool {
    x <= tolerance
}

#[derive(Default)]
struct Losses(Vec<StepMetrics>);

impl Observer for Losses {
    fn step(&mut self, m: &StepMetrics) {
        self.0.push(m.clone());
    }
    fn checkpoint(&mut self, _: Vec<u8>, _: Option<usize>) -> Result<(), String> {
        Ok(())
    }
}

/// The overrides of the default config for the run `sca check-device` compares: ResNet-50
/// with its full stem (activations as configured, channels-last by default), two epochs of
/// 8 images at `size` px in batches of 4 (4 steps), SwAV with its queue, and the add-on on
/// the multi-stage tap from the first epoch's clustering on.
pub fn check_overrides(size: usize) -> Vec<String> {
    [
        "epochs=2", "batch_size=4", "model.arch=resnet50", "model.small_stem=false", "data.train_size=8",
        "engine.queue_length=16", "engine.freeze_prototypes_steps=1", "addon.clusters=3", "addon.kmeans_iterations=3",
        "addon.tap=\"multi\"", "eval.knn_every=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("data.image_size={size}"), format!("data.augment.crops=[{{\"count\":2,\"size\":{size},\"min_scale\":0.3,\"max_scale\":1.0}}]")])
    .collect()
}

/// Trains `cfg` on `data` on `device` and on the CPU from the same start (seed 5) and
/// compares them (see the module's documentation).
pub fn compare_with_cpu<G: TrackedSum>(cfg: TrainConfig, data: Arc<dyn Dataset>, device: G::Device) -> Result<Parity, TrainError> {
    use burn::tensor::backend::Backend;
    Cpu::seed(&FlexDevice, 5);
    // The CPU trains from where it starts; the device from a copy of that start.
    let mut cpu = Trainer::<Cpu>::new(cfg.clone(), data.clone(), None, FlexDevice);
    let start_bytes = cpu.checkpoint_bytes();
    let start_weights = cpu.backbone_safetensors();
    let mut want = Losses::default();
    finished(cpu.run(&mut want)?)?;
    let mut dev = Trainer::<G>::new(cfg.clone(), data, None, device.clone());
    dev.restore(&start_bytes)?;
    let mut got = Losses::default();
    finished(dev.run(&mut got)?)?;

    if got.0.len() != want.0.len() {
        return Err(TrainError::Observer(format!("the device ran {} steps and the CPU {}", got.0.len(), want.0.len())));
    }
    let steps = got.0.iter().zip(&want.0).map(|(g, w)| StepParity::of(g, w)).collect();
    let mut tensors = update_errors(&start_weights, &cpu.backbone_safetensors(), &dev.backbone_safetensors());
    tensors.sort_by(|a, b| b.update_error.total_cmp(&a.update_error));
    let batch = fixed_batch(4, cfg.data.image_size);
    let (f_dev, f_cpu) = (dev.pooled_features(batch.clone()), cpu.pooled_features(batch));
    let features = l2(&f_dev, &f_cpu) / norm(&f_cpu).max(1e-12);
    Ok(Parity { steps, tensors, features, top_k_mismatches: top_k_mismatches::<G::InnerBackend>(&device) })
}

fn finished(end: RunEnd) -> Result<(), TrainError> {
    match end {
        RunEnd::Finished => Ok(()),
        other => Err(TrainError::Observer(format!("the comparison run ended early: {other:?}"))),
    }
}

/// `‖device − cpu‖ / ‖cpu − start‖` for every tensor of the three safetensors.
fn update_errors(start: &[u8], cpu: &[u8], dev: &[u8]) -> Vec<TensorParity> {
    fn read(b: &[u8]) -> safetensors::SafeTensors<'_> {
        safetensors::SafeTensors::deserialize(b).expect("a backbone's own safetensors")
    }
    let (start, cpu, dev) = (read(start), read(cpu), read(dev));
    let values = |s: &safetensors::SafeTensors, name: &str| -> Vec<f32> {
        let t = s.tensor(name).expect("the same backbone's tensor");
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    let mut names: Vec<String> = cpu.names().into_iter().cloned().collect();
    names.sort();
    names
        .into_iter()
        .filter(|n| !n.ends_with("num_batches_tracked"))
        .map(|name| {
            let (s, c, d) = (values(&start, &name), values(&cpu, &name), values(&dev, &name));
            let (moved, off) = (l2(&c, &s), l2(&d, &c));
            let update_error = if moved == 0.0 { if off == 0.0 { 0.0 } else { f64::INFINITY } } else { off / moved };
            TensorParity { name, update_error }
        })
        .collect()
}

/// `‖a − b‖`.
fn l2(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>().sqrt()
}

/// `‖a‖`.
fn norm(a: &[f32]) -> f64 {
    a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

/// A deterministic batch of `n` images of `size` pixels, values in [-1, 1).
fn fixed_batch(n: usize, size: usize) -> ImageBatch {
    let data = (0..n * 3 * size * size).map(|i| ((i * 7919 % 2001) as f32 / 1000.0) - 1.0).collect();
    ImageBatch { data, shape: [n, 3, size, size] }
}

/// Entries where the device's `top_k` (the GPU selection on CubeCL backends) differs from
/// the CPU's, over rows of distinct values (so the choice is unique).
fn top_k_mismatches<B: burn::tensor::backend::Backend>(device: &B::Device) -> usize {
    let (rows, n, k) = (8, 1000, 50);
    // A permutation of 0..n per row: distinct values.
    let values: Vec<f32> = (0..rows).flat_map(|r| (0..n).map(move |i| ((i * 389 + r * 97) % n) as f32)).collect();
    // Each row's k values, sorted (top_k gives them in no particular order).
    let rows_sorted = |v: TensorData| -> Vec<f32> {
        let mut v: Vec<f32> = v.convert::<f32>().to_vec::<f32>().unwrap();
        v.chunks_mut(k).for_each(|row| row.sort_by(f32::total_cmp));
        v
    };
    let got = rows_sorted(sca_kernels::top_k(sca_kernels::upload::<B, 2>(values.clone(), [rows, n], device), k).0.into_data());
    let want = rows_sorted(sca_kernels::top_k(sca_kernels::upload::<Flex, 2>(values, [rows, n], &FlexDevice), k).0.into_data());
    got.iter().zip(&want).filter(|(a, b)| a != b).count() + got.len().abs_diff(want.len())
}
