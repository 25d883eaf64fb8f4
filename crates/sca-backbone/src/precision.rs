//! Mixed precision in the style of PyTorch's autocast: the convolutions (nearly all of a
//! ResNet's arithmetic) run in bf16 or f16, everything else in f32.
//!
//! Parameters stay f32 (the master weights the optimiser updates). A convolution casts its
//! input, weight and bias to the compute type, runs, and casts its output back to f32, so
//! batch norm, the heads, the losses and Sinkhorn see f32. Autodiff's cast is its own
//! backward (the gradient is cast back to the source type), so the weight gradients arrive
//! in f32 too. f16 has a narrow range: training with it needs loss scaling (sca-train).

use std::fmt;
use std::str::FromStr;

use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};

/// The arithmetic type of the convolutions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Convolutions in bfloat16 (f32's range, 8 bits of mantissa): no loss scaling needed.
    Bf16,
    /// Convolutions in IEEE half (11 bits of mantissa, max 65504): needs loss scaling.
    F16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// The type convolutions compute in; `None` for f32 (no casts at all).
    pub fn compute_dtype(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
            Precision::F16 => Some(FloatDType::F16),
        }
    }

    /// Whether training needs a loss scale to keep small gradients from flushing to zero.
    pub fn needs_loss_scaling(self) -> bool {
        self == Precision::F16
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s.to_ascii_lowercase())
            .ok_or_else(|| format!("unknown precision '{s}' (expected f32, bf16 or f16)"))
    }
}
