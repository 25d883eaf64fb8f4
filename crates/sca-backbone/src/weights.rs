//! torchvision-compatible weights: every parameter and BN running statistic under exactly
//! the key and shape of torchvision's `state_dict`, stored as safetensors.
//!
//! One list of named slots ([`ResNet::visit_slots`]) drives saving, loading and the key list,
//! so the three cannot drift apart. Conventions that differ between the two libraries are
//! converted here: Burn's `Linear` stores `[in, out]` (torchvision `[out, in]`), and BN's
//! γ/β are torchvision's `weight`/`bias`.

use std::collections::BTreeMap;

use burn::module::{Module, Param, RunningState};
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};

use crate::resnet::{Block, ResNet};

/// Why a set of weights does not fit a model. Every variant lists the keys at fault.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("not a readable safetensors file: {0}")]
    Format(String),
    #[error("weights do not match {arch}:{}{}{}", list("missing keys", missing), list("unexpected keys", unexpected), list("shape mismatches", mismatched))]
    Mismatch { arch: String, missing: Vec<String>, unexpected: Vec<String>, mismatched: Vec<String> },
    #[error("tensor '{key}' has dtype {dtype}; only F32 (and I64 for num_batches_tracked) is supported")]
    Dtype { key: String, dtype: String },
}

fn list(what: &str, keys: &[String]) -> String {
    if keys.is_empty() {
        return String::new();
    }
    const SHOW: usize = 20;
    let more = if keys.len() > SHOW { format!(" (+{} more)", keys.len() - SHOW) } else { String::new() };
    format!("\n  {what} ({}): {}{more}", keys.len(), keys[..keys.len().min(SHOW)].join(", "))
}

/// What a successful load did besides filling every parameter.
#[derive(Debug, Default, PartialEq)]
pub struct WeightsReport {
    /// Keys present in the file that this model deliberately does not use (`fc.*` when the
    /// model has no classifier, `num_batches_tracked`).
    pub ignored: Vec<String>,
}

/// A mutable reference to one stored tensor of the model.
pub enum Slot<'a, B: Backend> {
    Conv(&'a mut Param<Tensor<B, 4>>),
    Vector(&'a mut Param<Tensor<B, 1>>),
    Running(&'a mut RunningState<Tensor<B, 1>>),
    /// A Linear weight: transposed between Burn and torchvision.
    LinearWeight(&'a mut Param<Tensor<B, 2>>),
}

impl<B: Backend> Slot<'_, B> {
    /// The tensor in torchvision's layout.
    fn read(&self) -> TensorData {
        match self {
            Slot::Conv(p) => p.val().into_data(),
            Slot::Vector(p) => p.val().into_data(),
            Slot::Running(r) => r.value().into_data(),
            Slot::LinearWeight(p) => p.val().transpose().into_data(),
        }
    }

    fn shape(&self) -> Vec<usize> {
        match self {
            Slot::Conv(p) => p.val().dims().to_vec(),
            Slot::Vector(p) => p.val().dims().to_vec(),
            Slot::Running(r) => r.value().dims().to_vec(),
            Slot::LinearWeight(p) => {
                let [i, o] = p.val().dims();
                vec![o, i]
            }
        }
    }

    /// Replaces the tensor with `data` (torchvision layout), keeping ids and autodiff flags.
    fn write(&mut self, data: TensorData, device: &B::Device) {
        match self {
            Slot::Conv(p) => **p = p.clone().transform_for_load(Tensor::from_data(data, device), p.id),
            Slot::Vector(p) => **p = p.clone().transform_for_load(Tensor::from_data(data, device), p.id),
            Slot::Running(r) => **r = RunningState::new(Tensor::from_data(data, device)),
            Slot::LinearWeight(p) => {
                let t: Tensor<B, 2> = Tensor::from_data(data, device);
                **p = p.clone().transform_for_load(t.transpose(), p.id)
            }
        }
    }
}

fn conv_slots<'a, B: Backend>(name: &str, c: &'a mut Conv2d<B>, out: &mut Vec<(String, Slot<'a, B>)>) {
    out.push((format!("{name}.weight"), Slot::Conv(&mut c.weight)));
}

fn bn_slots<'a, B: Backend>(name: &str, bn: &'a mut BatchNorm<B>, out: &mut Vec<(String, Slot<'a, B>)>) {
    out.push((format!("{name}.weight"), Slot::Vector(&mut bn.gamma)));
    out.push((format!("{name}.bias"), Slot::Vector(&mut bn.beta)));
    out.push((format!("{name}.running_mean"), Slot::Running(&mut bn.running_mean)));
    out.push((format!("{name}.running_var"), Slot::Running(&mut bn.running_var)));
}

fn linear_slots<'a, B: Backend>(name: &str, l: &'a mut Linear<B>, out: &mut Vec<(String, Slot<'a, B>)>) {
    out.push((format!("{name}.weight"), Slot::LinearWeight(&mut l.weight)));
    if let Some(b) = l.bias.as_mut() {
        out.push((format!("{name}.bias"), Slot::Vector(b)));
    }
}

fn block_slots<'a, B: Backend>(name: &str, b: &'a mut Block<B>, out: &mut Vec<(String, Slot<'a, B>)>) {
    conv_slots(&format!("{name}.conv1"), &mut b.conv1, out);
    bn_slots(&format!("{name}.bn1"), &mut b.bn1, out);
    conv_slots(&format!("{name}.conv2"), &mut b.conv2, out);
    bn_slots(&format!("{name}.bn2"), &mut b.bn2, out);
    if let (Some(c3), Some(b3)) = (b.conv3.as_mut(), b.bn3.as_mut()) {
        conv_slots(&format!("{name}.conv3"), c3, out);
        bn_slots(&format!("{name}.bn3"), b3, out);
    }
    if let Some(d) = b.downsample.as_mut() {
        conv_slots(&format!("{name}.downsample.0"), &mut d.conv, out);
        bn_slots(&format!("{name}.downsample.1"), &mut d.bn, out);
    }
}

/// torchvision also stores a BN batch counter; it carries no weight, so we accept and skip it.
fn is_counter(key: &str) -> bool {
    key.ends_with(".num_batches_tracked")
}

impl<B: Backend> ResNet<B> {
    /// Every stored tensor under its torchvision key, in torchvision's `state_dict` order.
    pub fn visit_slots(&mut self) -> Vec<(String, Slot<'_, B>)> {
        let mut out = Vec::new();
        conv_slots("conv1", &mut self.conv1, &mut out);
        bn_slots("bn1", &mut self.bn1, &mut out);
        for (i, layer) in [&mut self.layer1, &mut self.layer2, &mut self.layer3, &mut self.layer4]
            .into_iter()
            .enumerate()
        {
            for (j, block) in layer.iter_mut().enumerate() {
                block_slots(&format!("layer{}.{j}", i + 1), block, &mut out);
            }
        }
        if let Some(fc) = self.fc.as_mut() {
            linear_slots("fc", fc, &mut out);
        }
        out
    }

    /// Keys and shapes this model stores (without `num_batches_tracked`).
    pub fn expected_keys(&self) -> Vec<(String, Vec<usize>)> {
        let mut m = self.clone();
        m.visit_slots().into_iter().map(|(k, s)| (k, s.shape())).collect()
    }

    /// Number of trainable parameters (running statistics excluded), as torchvision counts.
    pub fn num_params(&self) -> usize {
        let mut m = self.clone();
        m.visit_slots()
            .iter()
            .filter(|(_, s)| !matches!(s, Slot::Running(_)))
            .map(|(_, s)| s.shape().iter().product::<usize>())
            .sum()
    }

    /// Every tensor in torchvision layout, keyed by its torchvision name.
    pub fn named_tensors(&self) -> Vec<(String, TensorData)> {
        let mut m = self.clone();
        m.visit_slots().into_iter().map(|(k, s)| (k, s.read())).collect()
    }

    /// Loads tensors given under torchvision names. All of the model's keys must be present
    /// with the right shapes; `fc.*` is ignored when the model has no classifier.
    pub fn load_named(mut self, tensors: BTreeMap<String, TensorData>) -> Result<(Self, WeightsReport), WeightsError> {
        let device = self.devices().first().cloned().expect("model lives on a device");
        let arch = self.arch_name.clone();
        let has_fc = self.fc.is_some();
        let mut report = WeightsReport::default();
        let mut slots = self.visit_slots();
        let (mut missing, mut mismatched) = (Vec::new(), Vec::new());
        for (key, slot) in &slots {
            match tensors.get(key) {
                None => missing.push(key.clone()),
                Some(t) if t.shape.as_slice() != slot.shape().as_slice() => {
                    mismatched.push(format!("{key} (file {:?}, model {:?})", t.shape.as_slice(), slot.shape()))
                }
                Some(_) => {}
            }
        }
        let known: std::collections::HashSet<&str> = slots.iter().map(|(k, _)| k.as_str()).collect();
        let mut unexpected = Vec::new();
        for key in tensors.keys().filter(|k| !known.contains(k.as_str())) {
            if is_counter(key) || (!has_fc && key.starts_with("fc.")) {
                report.ignored.push(key.clone());
            } else {
                unexpected.push(key.clone());
            }
        }
        if !(missing.is_empty() && unexpected.is_empty() && mismatched.is_empty()) {
            return Err(WeightsError::Mismatch { arch, missing, unexpected, mismatched });
        }
        let mut tensors = tensors;
        for (key, slot) in slots.iter_mut() {
            let data = tensors.remove(key.as_str()).expect("checked above");
            slot.write(data.convert::<f32>(), &device);
        }
        drop(slots);
        Ok((self, report))
    }

    /// The model as a safetensors file with torchvision keys. BN counters are written as
    /// I64 scalars (0) so `load_state_dict(strict=True)` in PyTorch accepts the file.
    pub fn to_safetensors(&self) -> Vec<u8> {
        let named = self.named_tensors();
        let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (key, data) in named {
            let values: Vec<f32> = data.to_vec().expect("f32 tensor");
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            if key.ends_with(".running_var") {
                let counter = key.replace(".running_var", ".num_batches_tracked");
                owned.push((key, Dtype::F32, data.shape.to_vec(), bytes));
                owned.push((counter, Dtype::I64, vec![], 0i64.to_le_bytes().to_vec()));
            } else {
                owned.push((key, Dtype::F32, data.shape.to_vec(), bytes));
            }
        }
        let views: Vec<(String, TensorView<'_>)> = owned
            .iter()
            .map(|(k, dt, shape, bytes)| (k.clone(), TensorView::new(*dt, shape.clone(), bytes).expect("consistent view")))
            .collect();
        safetensors::serialize(views, &None).expect("serialising in-memory tensors")
    }

    /// Loads a safetensors file in torchvision naming (ours, or one made from torchvision).
    pub fn load_safetensors(self, bytes: &[u8]) -> Result<(Self, WeightsReport), WeightsError> {
        self.load_named(read_safetensors(bytes)?)
    }
}

/// Parses safetensors bytes into F32 tensors by name; `num_batches_tracked` counters
/// (I64) are passed through as F32 so callers can report them.
pub fn read_safetensors(bytes: &[u8]) -> Result<BTreeMap<String, TensorData>, WeightsError> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| WeightsError::Format(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (key, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let raw = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            Dtype::I64 if is_counter(&key) => {
                raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect()
            }
            other => return Err(WeightsError::Dtype { key, dtype: format!("{other:?}") }),
        };
        out.insert(key, TensorData::new(values, shape));
    }
    Ok(out)
}
