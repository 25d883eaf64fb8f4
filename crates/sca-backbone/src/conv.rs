//! Convolution as matrix multiplication, built only from differentiable tensor ops, and the
//! choice between it and the backends' kernels ([`ConvImpl`]: on CUDA the default is the
//! `sca-kernels` crate's implicit-GEMM operation).
//!
//! Burn 0.21's `conv2d` is slow on the CPU backend (its backward runs a transposed conv for
//! the input and a large-kernel conv for the weight), while its matmul runs at the machine's
//! GEMM rate. [`conv_forward`] computes the same convolution as `Conv2d::forward`, from the
//! same module (same parameters, same weight files), either natively or as one GEMM:
//!
//! - 1×1 stride 1: a batched matmul straight on NCHW, or the position-major layout below;
//! - everything else (k×k, strides, padding, dilation): im2col in position-major layout.
//!   The input becomes rows of channels, one per (position, image), with one extra zero
//!   position standing in for the padding; the k·k taps of each output are gathered as whole
//!   rows with `select` (whose backward is one `select_add`, i.e. col2im); one GEMM with the
//!   weight reordered to `[kh·kw·C, O]`; the result is transposed back to NCHW.
//!
//! Shifted strided slices (`slice` + `cat`) would express im2col too, but the Flex backend
//! copies such 3-D strided views element by element and their backward materialises k·k
//! zero tensors of input size; the row gather avoids both. Autodiff works on every backend
//! without custom backward code.

use std::fmt;
use std::str::FromStr;

use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{FloatDType, Int, Tensor, TensorData};
use sca_kernels::gemm_conv2d;
use serde::{Deserialize, Serialize};

use crate::precision::Precision;

/// How [`conv_forward`] computes a convolution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvImpl {
    /// Burn's `conv2d` (the backend's convolution kernels).
    Native,
    /// Reshape / im2col + matmul: faster for training on the CPU backend (see
    /// `examples/conv_bench.rs`).
    Matmul,
    /// On CUDA, for all three passes the kernels the convolution plan names (cubek's
    /// implicit GEMM by default), chosen without autotune (see the `sca-kernels` crate);
    /// elsewhere the backend's kernels through the same autodiff operation.
    Gemm,
    /// The default: `gemm` on CUDA, `matmul` elsewhere.
    #[default]
    Auto,
}

impl ConvImpl {
    pub const ALL: [ConvImpl; 4] = [ConvImpl::Native, ConvImpl::Matmul, ConvImpl::Gemm, ConvImpl::Auto];

    pub fn name(self) -> &'static str {
        match self {
            ConvImpl::Native => "native",
            ConvImpl::Matmul => "matmul",
            ConvImpl::Gemm => "gemm",
            ConvImpl::Auto => "auto",
        }
    }

    /// What runs on backend `B`: `Auto` resolved, the others as they are.
    pub fn on<B: Backend>(self) -> ConvImpl {
        match self {
            ConvImpl::Auto if sca_kernels::on_cuda::<B>() => ConvImpl::Gemm,
            ConvImpl::Auto => ConvImpl::Matmul,
            imp => imp,
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
            .ok_or_else(|| format!("unknown convolution implementation '{s}' (expected native, matmul, gemm or auto)"))
    }
}

/// How the matmul path arranges its operands. Exposed for the benchmark and the tests;
/// [`conv_forward`] picks one per convolution.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// 1×1 stride 1 only: `[1, O, C] @ [B, C, H·W]` straight on NCHW, no copies. Its weight
    /// gradient is formed per image (`[B, O, C]`) and then summed, so it suits layers with
    /// large maps and narrow weights.
    Batched,
    /// Position-major: the input is transposed to rows of channels, one per (position,
    /// image); k×k taps are gathered as whole rows (a row `select`, i.e. memcpy-sized
    /// copies); one `[H'·W'·B, K] @ [K, O]` GEMM; the result is transposed back to NCHW.
    Rows,
}

/// `conv.forward(x)` computed by `imp`. Cases the matmul path does not cover (groups,
/// `Same` padding) fall back to the native convolution.
pub fn conv_forward<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>, imp: ConvImpl) -> Tensor<B, 4> {
    conv_forward_in(conv, x, imp, Precision::F32)
}

/// [`conv_forward`] computed in `precision`: input, weight and bias are cast to the compute
/// type, the output back to the input's type (see [`crate::precision`]). Convolutions that
/// neither path can express with explicit padding stay in the input's type.
pub fn conv_forward_in<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>, imp: ConvImpl, precision: Precision) -> Tensor<B, 4> {
    let Some(g) = matmul_geometry(conv, &x) else {
        return conv.forward(x);
    };
    let dtype = precision.compute_dtype();
    let imp = imp.on::<B>();
    if imp == ConvImpl::Native && dtype.is_none() {
        return conv.forward(x);
    }
    let out_dtype = FloatDType::from(x.dtype());
    let (weight, bias) = (cast_to(conv.weight.val(), dtype), conv.bias.as_ref().map(|b| cast_to(b.val(), dtype)));
    let y = match imp {
        ConvImpl::Native | ConvImpl::Gemm => {
            // Uneven padding is applied here, before the cast: Burn's `conv2d` pads it with
            // a zero tensor of the default float type, which a bf16 input does not accept.
            let (top, bottom, left, right) = g.pad;
            let (x, padding) = if top == bottom && left == right {
                (x, [top, left])
            } else {
                (x.pad((left, right, top, bottom), PadMode::Constant(0.0)), [0, 0])
            };
            let options = ConvOptions::new(conv.stride, padding, conv.dilation, conv.groups);
            if imp == ConvImpl::Native {
                burn::tensor::module::conv2d(cast_to(x, dtype), weight, bias, options)
            } else {
                let y = gemm_conv2d(cast_to(x, dtype), weight, options);
                match bias {
                    Some(bias) => y + bias.reshape([1, -1, 1, 1]),
                    None => y,
                }
            }
        }
        ConvImpl::Matmul | ConvImpl::Auto => conv_matmul_impl(conv, cast_to(x, dtype), weight, bias, g, auto_layout(&g, conv)),
    };
    match dtype {
        Some(_) => y.cast(out_dtype),
        None => y,
    }
}

/// `t` in the compute type, if there is one.
fn cast_to<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: Option<FloatDType>) -> Tensor<B, D> {
    match dtype {
        Some(d) => t.cast(d),
        None => t,
    }
}

fn auto_layout<B: Backend>(g: &Geometry, conv: &Conv2d<B>) -> Layout {
    if g.pointwise && batched_pays(g, conv.weight.dims()[0]) {
        Layout::Batched
    } else {
        Layout::Rows
    }
}

/// The batched layout skips four transposes of activation size but materialises a per-image
/// weight gradient `[B, O, C]` and runs thin per-image GEMMs: worth it while the weight is
/// small against the activations moved. The factor 4 is the measured crossover on the CPU
/// backend (conv_bench `layout`, 1×1 convs of ResNet-50 at 2-16 px).
fn batched_pays(g: &Geometry, o: usize) -> bool {
    let c = g.k;
    o * c <= 4 * g.out_h * g.out_w * (c + o)
}

/// The matmul path with a forced layout (benchmarks and tests). `Batched` needs a 1×1,
/// stride-1, unpadded convolution.
#[doc(hidden)]
pub fn conv_matmul_with_layout<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>, layout: Layout) -> Tensor<B, 4> {
    let g = matmul_geometry(conv, &x).expect("conv supported by the matmul path");
    assert!(layout == Layout::Rows || g.pointwise, "the batched layout needs a 1×1 stride-1 unpadded conv");
    conv_matmul_impl(conv, x, conv.weight.val(), conv.bias.as_ref().map(|b| b.val()), g, layout)
}

#[derive(Clone, Copy, Debug)]
struct Geometry {
    /// (top, bottom, left, right)
    pad: (usize, usize, usize, usize),
    out_h: usize,
    out_w: usize,
    /// Reduction length `C·kh·kw`.
    k: usize,
    /// 1×1, stride 1, no padding: the input already is the column matrix.
    pointwise: bool,
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
    let [_, c, h, w] = x.dims();
    let [kh, kw] = conv.kernel_size;
    let [sh, sw] = conv.stride;
    let [dh, dw] = conv.dilation;
    let (hp, wp) = (h + pad.0 + pad.1, w + pad.2 + pad.3);
    let (eh, ew) = (dh * (kh - 1) + 1, dw * (kw - 1) + 1);
    if hp < eh || wp < ew {
        return None; // let conv2d report the error
    }
    let pointwise = kh * kw == 1 && sh * sw == 1 && pad == (0, 0, 0, 0);
    Some(Geometry { pad, out_h: (hp - eh) / sh + 1, out_w: (wp - ew) / sw + 1, k: c * kh * kw, pointwise })
}

fn int_tensor<B: Backend>(v: Vec<i64>, device: &B::Device) -> Tensor<B, 1, Int> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

/// The matmul path on `weight` and `bias` (the conv's own, or cast copies of them); `conv`
/// gives the geometry.
fn conv_matmul_impl<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>, weight: Tensor<B, 4>, bias: Option<Tensor<B, 1>>, g: Geometry, layout: Layout) -> Tensor<B, 4> {
    let device = x.device();
    let [b, c, h, w] = x.dims();
    let [o, _, kh, kw] = weight.dims();
    let (oh, ow, kk) = (g.out_h, g.out_w, kh * kw);
    let n = oh * ow;
    let out = match layout {
        Layout::Batched => {
            let weight = weight.reshape([1, o, c]);
            weight.matmul(x.reshape([b, c, h * w])).reshape([b, o, oh, ow])
        }
        Layout::Rows => {
            // [B, C, H, W] → [H·W, B·C]: a 2-D transpose (the copy kernels' fast case).
            let xt = x.reshape([b * c, h * w]).swap_dims(0, 1);
            let cols = if g.pointwise {
                xt.reshape([h * w * b, c])
            } else {
                let (idx, reads_padding) = gather_rows(&g, conv, [b, h, w]);
                let src = if reads_padding {
                    // One extra all-zero position: every tap that falls in the padding reads it.
                    let zero = Tensor::<B, 2>::zeros([1, b * c], &device).cast(xt.dtype());
                    Tensor::cat(vec![xt, zero], 0)
                } else {
                    xt
                };
                let rows = src.dims()[0] * b;
                src.reshape([rows, c]).select(0, int_tensor::<B>(idx, &device)).reshape([n * b, kk * c])
            };
            // Conv2d stores [O, C, kh, kw]; the gathered columns are tap-major, channel-minor.
            let weight = weight.reshape([o, c * kk]);
            let weight = if kk == 1 {
                weight
            } else {
                let perm = (0..kk).flat_map(|t| (0..c).map(move |ci| (ci * kk + t) as i64)).collect();
                weight.select(1, int_tensor::<B>(perm, &device))
            };
            // [H'·W'·B, O] → [B·O, H'·W'] → NCHW.
            cols.matmul(weight.transpose()).reshape([n, b * o]).swap_dims(0, 1).reshape([b, o, oh, ow])
        }
    };
    match bias {
        Some(bias) => out + bias.reshape([1, o, 1, 1]),
        None => out,
    }
}

/// Row indices into the `[(H·W [+1])·B, C]` input for every (output position, image, tap),
/// in that order; positions in the padding read the extra zero position `H·W`. Also says
/// whether any tap reads the padding.
fn gather_rows<B: Backend>(g: &Geometry, conv: &Conv2d<B>, [b, h, w]: [usize; 3]) -> (Vec<i64>, bool) {
    let [kh, kw] = conv.kernel_size;
    let [sh, sw] = conv.stride;
    let [dh, dw] = conv.dilation;
    let (top, left) = (g.pad.0 as i64, g.pad.2 as i64);
    let zero = (h * w) as i64;
    let mut reads_padding = false;
    let mut idx = Vec::with_capacity(g.out_h * g.out_w * b * kh * kw);
    // Source position of every (output position, tap), computed once and repeated per image.
    let mut taps = Vec::with_capacity(kh * kw);
    for y in 0..g.out_h {
        for x in 0..g.out_w {
            taps.clear();
            for i in 0..kh {
                for j in 0..kw {
                    let r = (y * sh + i * dh) as i64 - top;
                    let q = (x * sw + j * dw) as i64 - left;
                    let inside = r >= 0 && q >= 0 && r < h as i64 && q < w as i64;
                    reads_padding |= !inside;
                    taps.push(if inside { r * w as i64 + q } else { zero });
                }
            }
            for bi in 0..b as i64 {
                idx.extend(taps.iter().map(|&p| p * b as i64 + bi));
            }
        }
    }
    (idx, reads_padding)
}
