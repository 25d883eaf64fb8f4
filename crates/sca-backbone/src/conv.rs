//! Convolution as matrix multiplication, built only from differentiable tensor ops.
//!
//! Burn 0.21's `conv2d` is slow on the CPU backend (its backward runs a transposed conv for
//! the input and a large-kernel conv for the weight), while its matmul reaches the machine's
//! GEMM rate. [`conv_forward`] computes the same convolution as `Conv2d::forward` from the
//! same module (same parameters, same weight files) either natively or as:
//!
//! - 1×1: an optional strided slice (stride 2) and one matmul with the `[O, C]` weight;
//! - k×k: im2col from k² shifted strided slices of the zero-padded input, stacked on the
//!   channel axis, and one matmul with the weight reshaped to `[O, k·k·C]`.
//!
//! Autodiff therefore works on every backend without custom backward code.

use std::fmt;
use std::str::FromStr;

use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::{Slice, Tensor};
use serde::{Deserialize, Serialize};

/// How [`conv_forward`] computes a convolution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvImpl {
    /// Burn's `conv2d` (the backend's convolution kernels).
    Native,
    /// Reshape / im2col + matmul. The default: faster for training on the CPU backend
    /// (see `examples/conv_bench.rs`).
    #[default]
    Matmul,
}

impl ConvImpl {
    pub const ALL: [ConvImpl; 2] = [ConvImpl::Native, ConvImpl::Matmul];

    pub fn name(self) -> &'static str {
        match self {
            ConvImpl::Native => "native",
            ConvImpl::Matmul => "matmul",
        }
    }
}

impl fmt::Display for ConvImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ConvImpl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ConvImpl::ALL
            .into_iter()
            .find(|c| c.name() == s.to_ascii_lowercase())
            .ok_or_else(|| format!("unknown convolution implementation '{s}' (expected native or matmul)"))
    }
}

/// Where the matmul puts the batch axis. Exposed for the benchmark; [`conv_forward`] picks.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[1, O, K] @ [B, K, N]`: no transposes, but the weight gradient is formed per image
    /// (`[B, O, K]`) and then summed, and small `N` makes thin per-image GEMMs.
    Batched,
    /// `[O, K] @ [K, B·N]`: one wide GEMM; costs a transpose of the input and output.
    Flat,
}

/// Heuristic layout choice. The flat layout wins once the per-image GEMM gets thin (late
/// stages, small inputs) or its per-image weight gradient `[B, O, K]` gets large.
fn pick_layout(n: usize, k: usize, o: usize, b: usize) -> Layout {
    // Measured on the 2-core CPU (examples/conv_bench.rs); see `flat_threshold`.
    let _ = (k, o, b);
    if n >= FLAT_BELOW_N {
        Layout::Batched
    } else {
        Layout::Flat
    }
}

const FLAT_BELOW_N: usize = 256;

/// `conv.forward(x)` computed by `imp`. Cases the matmul path does not cover (groups,
/// `Same` padding) fall back to the native convolution.
pub fn conv_forward<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>, imp: ConvImpl) -> Tensor<B, 4> {
    match imp {
        ConvImpl::Native => conv.forward(x),
        ConvImpl::Matmul => match matmul_geometry(conv, &x) {
            Some(g) => {
                let layout = pick_layout(g.out_h * g.out_w, g.k, conv.weight.dims()[0], g.batch);
                conv_matmul_impl(conv, x, g, layout)
            }
            None => conv.forward(x),
        },
    }
}

/// The matmul path with a forced layout (benchmarks and tests).
#[doc(hidden)]
pub fn conv_matmul_with_layout<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>, layout: Layout) -> Tensor<B, 4> {
    let g = matmul_geometry(conv, &x).expect("conv supported by the matmul path");
    conv_matmul_impl(conv, x, g, layout)
}

#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    /// (top, bottom, left, right)
    pad: (usize, usize, usize, usize),
    out_h: usize,
    out_w: usize,
    /// Reduction length `C·kh·kw`.
    k: usize,
}

fn matmul_geometry<B: Backend>(conv: &Conv2d<B>, x: &Tensor<B, 4>) -> Option<Geometry> {
    if conv.groups != 1 {
        return None;
    }
    let pad = match conv.padding {
        PaddingConfig2d::Valid => (0, 0, 0, 0),
        PaddingConfig2d::Explicit(top, left, bottom, right) => (top, bottom, left, right),
        PaddingConfig2d::Same => return None,
    };
    let [b, c, h, w] = x.dims();
    let [kh, kw] = conv.kernel_size;
    let [sh, sw] = conv.stride;
    let [dh, dw] = conv.dilation;
    let (hp, wp) = (h + pad.0 + pad.1, w + pad.2 + pad.3);
    let (eh, ew) = (dh * (kh - 1) + 1, dw * (kw - 1) + 1);
    if hp < eh || wp < ew {
        return None; // let conv2d report the error
    }
    Some(Geometry { batch: b, pad, out_h: (hp - eh) / sh + 1, out_w: (wp - ew) / sw + 1, k: c * kh * kw })
}

fn conv_matmul_impl<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>, g: Geometry, layout: Layout) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let [o, _, kh, kw] = conv.weight.dims();
    let [sh, sw] = conv.stride;
    let [dh, dw] = conv.dilation;
    let (oh, ow) = (g.out_h, g.out_w);
    let n = oh * ow;
    let (top, bottom, left, right) = g.pad;

    let x = if top + bottom + left + right > 0 {
        let device = x.device();
        Tensor::zeros([b, c, h + top + bottom, w + left + right], &device)
            .slice_assign([0..b, 0..c, top..top + h, left..left + w], x)
    } else {
        x
    };
    // In the flat layout the channel axis leads, so that every shifted slice below is a
    // view of `[C, B, ·, ·]` and the concatenation yields `[K, B, H', W']` directly.
    let x = match layout {
        Layout::Batched => x,
        Layout::Flat => x.swap_dims(0, 1),
    };
    // One (strided) view per kernel tap; offsets are in padded coordinates.
    let tap = |i: usize, j: usize| -> Tensor<B, 4> {
        let (r0, c0) = (i * dh, j * dw);
        let rows = Slice::new(r0 as isize, Some((r0 + sh * (oh - 1) + 1) as isize), sh as isize);
        let cols = Slice::new(c0 as isize, Some((c0 + sw * (ow - 1) + 1) as isize), sw as isize);
        x.clone().slice([Slice::full(), Slice::full(), rows, cols])
    };
    let identity_tap = kh == 1 && kw == 1 && sh == 1 && sw == 1;
    let cols = if identity_tap {
        x.clone()
    } else {
        let taps: Vec<_> = (0..kh).flat_map(|i| (0..kw).map(move |j| (i, j))).map(|(i, j)| tap(i, j)).collect();
        // Tap-major, channel-minor; the weight is permuted to the same order below.
        Tensor::cat(taps, match layout {
            Layout::Batched => 1,
            Layout::Flat => 0,
        })
    };
    drop(x);
    // [O, C, kh, kw] → [O, kh, kw, C] → [O, K]: a tiny copy compared with the activations.
    let weight = if kh * kw == 1 {
        conv.weight.val().reshape([o, g.k])
    } else {
        conv.weight.val().permute([0, 2, 3, 1]).reshape([o, g.k])
    };
    let out = match layout {
        Layout::Batched => {
            let cols = cols.reshape([b, g.k, n]);
            weight.unsqueeze::<3>().matmul(cols).reshape([b, o, oh, ow])
        }
        Layout::Flat => {
            let cols = cols.reshape([g.k, b * n]);
            weight.matmul(cols).reshape([o, b, oh, ow]).swap_dims(0, 1)
        }
    };
    match &conv.bias {
        Some(bias) => out + bias.val().reshape([1, o, 1, 1]),
        None => out,
    }
}
