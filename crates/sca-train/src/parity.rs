//! The same short training run on a device and on the CPU, compared: does the device compute
//! what the CPU computes?
//!
//! The CPU's Flex backend is the reference the tests check everything against; a GPU runs
//! this project's own kernels and CubeCL's runtime, which differ by card and driver (on
//! CUDA, for one, new tensors get padded rows that wgpu and the CPU never give). From one
//! start and on the same batches, both train `cfg` to its end; then the report holds every
//! step's loss on both, how far each backbone tensor ended from the CPU's relative to how
//! far the CPU's moved from the start (a wrong gradient or a scrambled update gives about 1
//! or more), the pooled features of a fixed batch through both trained backbones
//! (inference-mode batch norm), and a top-k selection on the device against a sort.
//!
//! Rounding alone moves a few tensors' updates a long way: with the convolutions' inputs
//! rounded to f16 (the 10-bit mantissa of the TF32 tensor cores a GPU convolves f32 with)
//! the CPU's own run ends up to 0.11 from its f32 one on `bn1.bias` at four steps, 0.25
//! with bf16, while half the tensors stay within 4e-5 (3e-4 with bf16). So [`Tolerances`]
//! judges the updates by their median, which an error in any kernel that touches most
//! layers raises, and by their worst against a loose bound, which a scrambled tensor
//! exceeds.

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

/// How far a device may be from the CPU (all relative differences).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Tolerances {
    /// Each loss term of each step, and the pooled features.
    pub loss: f64,
    /// The median over the backbone tensors of their update errors.
    pub update_median: f64,
    /// Each tensor's update error.
    pub update_worst: f64,
}

impl Tolerances {
    /// `sca check-device`'s defaults, for a GPU whose convolutions run on TF32 tensor cores:
    /// a CPU run with its convolutions in bf16, coarser than TF32, stays within them against
    /// its f32 run (`tests/parity_tolerances.rs`: losses 1.1e-2, median 3.3e-4, worst 0.25),
    /// while a 1 % error in the optimiser's update puts the median at 1e-2 and a scrambled
    /// weight puts its tensor at 1 or more.
    pub const GPU: Tolerances = Tolerances { loss: 0.05, update_median: 5e-3, update_worst: 0.5 };

    /// The same bound for every figure (a device whose convolutions round as the CPU's do).
    pub fn all(t: f64) -> Tolerances {
        Tolerances { loss: t, update_median: t, update_worst: t }
    }
}

impl Parity {
    /// The median of the tensors' update errors (0 without tensors).
    pub fn median_update_error(&self) -> f64 {
        let mut errors: Vec<f64> = self.tensors.iter().map(|t| t.update_error).collect();
        errors.sort_by(f64::total_cmp);
        errors.get(errors.len() / 2).copied().unwrap_or(0.0)
    }

    /// What exceeds `tol` (a loss or feature difference, the median or one tensor's update
    /// error; any top-k mismatch), one line each; empty when the device agrees.
    pub fn failures(&self, tol: &Tolerances) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.steps {
            for t in s.terms.iter().filter(|t| !within(t.relative(), tol.loss)) {
                out.push(format!("step {}: {} loss {} on the device, {} on the CPU (relative difference {:.2e} > {:.0e})", s.step, t.term, t.device, t.cpu, t.relative(), tol.loss));
            }
        }
        let median = self.median_update_error();
        if !within(median, tol.update_median) {
            out.push(format!("the median tensor's update is off by {median:.2e} of the CPU's (> {:.0e})", tol.update_median));
        }
        for t in self.tensors.iter().filter(|t| !within(t.update_error, tol.update_worst)) {
            out.push(format!("{}: its update is off by {:.2e} of the CPU's (> {:.0e})", t.name, t.update_error, tol.update_worst));
        }
        if !within(self.features, tol.loss) {
            out.push(format!("pooled features differ by {:.2e} (relative, > {:.0e})", self.features, tol.loss));
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
    compare_runs::<G>(cfg.clone(), cfg, data, device)
}

/// [`compare_with_cpu`] with the device training `device_cfg` and the CPU `cpu_cfg` (which
/// must make the same model, batches and steps): how far a setting alone moves a run, e.g.
/// lower-precision convolutions against f32 on the CPU itself.
pub fn compare_runs<G: TrackedSum>(device_cfg: TrainConfig, cpu_cfg: TrainConfig, data: Arc<dyn Dataset>, device: G::Device) -> Result<Parity, TrainError> {
    use burn::tensor::backend::Backend;
    Cpu::seed(&FlexDevice, 5);
    let size = cpu_cfg.data.image_size;
    // The CPU trains from where it starts; the device from a copy of that start.
    let mut cpu = Trainer::<Cpu>::new(cpu_cfg, data.clone(), None, FlexDevice);
    let start_bytes = cpu.checkpoint_bytes();
    let start_weights = cpu.backbone_safetensors();
    let mut want = Losses::default();
    finished(cpu.run(&mut want)?)?;
    let mut dev = Trainer::<G>::new(device_cfg, data, None, device.clone());
    dev.restore(&start_bytes)?;
    let mut got = Losses::default();
    finished(dev.run(&mut got)?)?;

    if got.0.len() != want.0.len() {
        return Err(TrainError::Observer(format!("the device ran {} steps and the CPU {}", got.0.len(), want.0.len())));
    }
    let steps = got.0.iter().zip(&want.0).map(|(g, w)| StepParity::of(g, w)).collect();
    let mut tensors = update_errors(&start_weights, &cpu.backbone_safetensors(), &dev.backbone_safetensors());
    tensors.sort_by(|a, b| b.update_error.total_cmp(&a.update_error));
    let batch = fixed_batch(4, size);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parity(errors: &[f64], loss: (f64, f64), features: f64) -> Parity {
        Parity {
            steps: vec![StepParity { step: 1, terms: vec![TermParity { term: "total", device: loss.0, cpu: loss.1 }] }],
            tensors: errors.iter().enumerate().map(|(i, &e)| TensorParity { name: format!("t{i}"), update_error: e }).collect(),
            features,
            top_k_mismatches: 0,
        }
    }

    #[test]
    fn the_median_and_the_worst_update_are_judged_apart() {
        let tol = Tolerances::GPU;
        // A few sensitive tensors far off, most close: rounding, accepted.
        let rounding = parity(&[0.3, 1e-4, 2e-4, 5e-5, 0.2], (1.0, 1.01), 1e-3);
        assert_eq!(rounding.median_update_error(), 2e-4);
        assert!(rounding.failures(&tol).is_empty(), "{:?}", rounding.failures(&tol));
        // Every tensor 1 % off (an error in the update kernel): the median says so.
        let kernel = parity(&[1e-2; 5], (1.0, 1.0), 0.0);
        assert_eq!(kernel.failures(&tol), vec!["the median tensor's update is off by 1.00e-2 of the CPU's (> 5e-3)"]);
        // One scrambled tensor among good ones: named by the worst bound.
        let scrambled = parity(&[1e-5, 1.4, 1e-5], (1.0, 1.0), 0.0);
        assert_eq!(scrambled.failures(&tol), vec!["t1: its update is off by 1.40e0 of the CPU's (> 5e-1)"]);
        // Losses (6 % off) and features against `loss`; a NaN never passes.
        let losses = parity(&[0.0], (1.06, 1.0), f64::NAN);
        let f = losses.failures(&tol);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].starts_with("step 1: total loss 1.06 on the device, 1 on the CPU (relative difference 6.00e-2"), "{}", f[0]);
        assert!(f[1].starts_with("pooled features differ by NaN"), "{}", f[1]);
        assert_eq!(parity(&[], (1.0, 1.0), 0.0).median_update_error(), 0.0);
    }
}
