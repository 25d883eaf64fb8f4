//! The linear classifier of the probe, stored as torchvision stores `nn.Linear`:
//! `weight` `[classes, features]`, `bias` `[classes]`. Its rows are the CAM weights α^c.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};

/// `y = x · Wᵀ + b` with `W` in torchvision layout.
#[derive(Module, Debug)]
pub struct LinearHead<B: Backend> {
    /// `[classes, features]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `[classes]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> LinearHead<B> {
    /// SwAV's linear-evaluation initialisation: weight ~ N(0, 0.01²), bias 0. The normal
    /// draws come from `seed` alone (not the backend's global generator), so a probe is
    /// reproducible whatever else runs in the process.
    pub fn new(features: usize, classes: usize, seed: u64, device: &B::Device) -> Self {
        let mut state = seed ^ 0x4845_4144;
        let mut uniform = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        // Box-Muller.
        let w: Vec<f32> = (0..classes * features)
            .map(|_| {
                let (u1, u2) = (1.0 - uniform(), uniform());
                (0.01 * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect();
        let weight = Tensor::from_data(TensorData::new(w, [classes, features]), device);
        Self::from_tensors(weight, Tensor::zeros([classes], device))
    }

    pub fn from_tensors(weight: Tensor<B, 2>, bias: Tensor<B, 1>) -> Self {
        assert_eq!(weight.dims()[0], bias.dims()[0], "one bias per class");
        Self { weight: Param::from_tensor(weight), bias: Param::from_tensor(bias) }
    }

    pub fn num_classes(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn num_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// `[batch, features]` → logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(self.weight.val().transpose()) + self.bias.val().unsqueeze::<2>()
    }

    /// The head as safetensors bytes (`weight`, `bias`, F32), loadable into
    /// `torch.nn.Linear(features, classes)` with `load_state_dict`.
    pub fn to_safetensors(&self) -> Vec<u8> {
        let w: Vec<f32> = self.weight.val().into_data().convert::<f32>().to_vec().expect("f32 weight");
        let b: Vec<f32> = self.bias.val().into_data().convert::<f32>().to_vec().expect("f32 bias");
        let wb: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bb: Vec<u8> = b.iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = vec![
            ("bias".to_string(), TensorView::new(Dtype::F32, vec![self.num_classes()], &bb).expect("bias view")),
            (
                "weight".to_string(),
                TensorView::new(Dtype::F32, vec![self.num_classes(), self.num_features()], &wb).expect("weight view"),
            ),
        ];
        safetensors::serialize(views, &None).expect("serialising in-memory tensors")
    }

    /// Reads a head written by [`LinearHead::to_safetensors`] (or by PyTorch from an
    /// `nn.Linear`, or a torchvision classifier's `fc.weight`/`fc.bias`).
    pub fn from_safetensors(bytes: &[u8], device: &B::Device) -> Result<Self, String> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
        let get = |names: [&str; 2]| {
            let name = names.iter().find(|n| st.names().iter().any(|m| m == *n)).ok_or_else(|| {
                format!("no tensor '{}' (found: {})", names[0], st.names().iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
            })?;
            let view = st.tensor(name).map_err(|e| e.to_string())?;
            if view.dtype() != Dtype::F32 {
                return Err(format!("tensor '{name}' has dtype {:?}; expected F32", view.dtype()));
            }
            let values: Vec<f32> =
                view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
            Ok(TensorData::new(values, view.shape().to_vec()))
        };
        let w = get(["weight", "fc.weight"])?;
        let b = get(["bias", "fc.bias"])?;
        if w.shape.len() != 2 || b.shape.len() != 1 || w.shape[0] != b.shape[0] {
            return Err(format!("weight {:?} and bias {:?} do not form a linear layer", w.shape, b.shape));
        }
        Ok(Self::from_tensors(Tensor::from_data(w, device), Tensor::from_data(b, device)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn initialisation_is_seeded_and_small() {
        let d = Default::default();
        let w = |seed| LinearHead::<Flex>::new(64, 50, seed, &d).weight.val().into_data().to_vec::<f32>().unwrap();
        let (a, b, c) = (w(1), w(1), w(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        // 3,200 draws of N(0, 0.01²): mean within 4 standard errors of 0, std within 5%.
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n;
        let std = (a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 4.0 * 0.01 / n.sqrt() && (std - 0.01).abs() < 0.0005, "mean {mean} std {std}");
    }
}
