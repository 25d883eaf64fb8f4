//! Convolutions as matmuls on cubek's tiled matmul: the plan's `matmul` kernel
//! ([`ConvKernel::Matmul`]).
//!
//! A convolution is a matmul per image, `Y_n = W·cols(X_n)`, with `W` as `[O, C·kh·kw]` and
//! `cols(X_n)` the `[C·kh·kw, H'·W']` matrix of input patches (im2col). For a 1×1, stride-1,
//! unpadded convolution (33 of ResNet-50's 53) `cols(X_n)` is `X_n` itself, an NCHW view: no
//! copy at all. For the others it is one copy, `kh·kw` times the input's size
//! ([`crate::im2col`]: a kernel on CubeCL backends). On CUDA the
//! products run on cubek's explicit tiled matmul ([`MatmulKernels`]), an alternative to its
//! implicit-GEMM convolution kernels that the plan takes where it is faster.
//!
//! - forward: `[1, O, C·k²] · [N, C·k², H'·W']`, the weight broadcast over the images;
//! - data gradient (stride 1; strided ones come as stride-1 ones on a zero-spread gradient,
//!   see [`crate::conv::strided_data_grad`]): the forward convolution of `dY` with the
//!   weight flipped and transposed (`[C, O, kh, kw]`) and padding `d(k−1) − p`;
//! - weight gradient: `Σ_g dY_g · cols(X_g)ᵀ` over groups of images, one batched matmul
//!   (each group's images side by side along the reduction), partial products summed in
//!   f32: the long reduction over the batch's pixels is split, so the small `O × C·k²`
//!   output still spreads over every SM (cubek's weight-gradient kernels tile the output
//!   only).
//!
//! With channels-last activations ([`crate::layout::set_channels_last`]) a convolution whose
//! input (or, for the data gradient, output gradient) is channels-last in memory runs on
//! rows of channels, one per image and output position: the patches as `[N·H'·W', kh·kw·C]`
//! (a 1 × 1 convolution's input itself, no copy; else one copy, [`Im2col::im2col_rows`],
//! reading along the channels), times the weight as `[kh·kw·C, O]` forward (the result
//! channels-last too), `dY · W` for a 1 × 1 data gradient (k × k ones are forward
//! convolutions of `dY`, so rows as well), and `dYᵀ · patches` over groups of rows for the
//! weight gradient (`dY` copied into rows if it is not channels-last).

use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{FloatDType, Shape, Tensor, TensorMetadata, TensorPrimitive};

use crate::conv::output_size;
use crate::im2col::{pointwise, Im2col};
use crate::matmul::MatmulKernels;
use crate::plan::{ConvKernel, Pass};

fn tensor<B: MatmulKernels, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn mm<B: MatmulKernels>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 3> {
    tensor(B::mm(a.into_primitive().tensor(), b.into_primitive().tensor()))
}

fn check_groups(options: &ConvOptions<2>) -> Result<(), String> {
    match options.groups {
        1 => Ok(()),
        g => Err(format!("{} takes ungrouped convolutions only ({g} groups)", ConvKernel::Matmul)),
    }
}

/// `[N, C, H, W]` → `[N, C·kh·kw, H'·W']` (one patch matrix per image).
fn im2col<B: Im2col>(x: Tensor<B, 4>, k: [usize; 2], o: &ConvOptions<2>) -> Tensor<B, 3> {
    let n = x.dims()[0];
    tensor(B::im2col(x.into_primitive().tensor(), k, o, n))
}

/// `y = conv(x, w)`.
pub fn forward<B: Im2col>(x: FloatTensor<B>, weight: FloatTensor<B>, options: &ConvOptions<2>) -> Result<FloatTensor<B>, String> {
    check_groups(options)?;
    let rows = B::channels_last_rows(&x);
    let (x, w) = (tensor::<B, 4>(x), tensor::<B, 4>(weight));
    let ([n, _, h, wd], [o, c, kh, kw]) = (x.dims(), w.dims());
    let [oh, ow] = output_size([h, wd], [kh, kw], options);
    if rows {
        // [N·H'·W', kh·kw·C] · [kh·kw·C, O], the weight's taps and channels in the patches' order.
        let w = taps_then_channels(w).unsqueeze::<3>().swap_dims(1, 2);
        let y = mm(patch_rows(x, [kh, kw], options).unsqueeze(), w); // [1, N·H'·W', O]
        return Ok(from_channel_rows(y.squeeze_dim(0), [n, o, oh, ow]).into_primitive().tensor());
    }
    let y = mm(w.reshape([1, o, c * kh * kw]), im2col(x, [kh, kw], options));
    Ok(y.reshape([n, o, oh, ow]).into_primitive().tensor())
}

/// `dx` of a stride-1 convolution, from the output gradient and the weight.
pub fn data_grad<B: Im2col>(grad: FloatTensor<B>, weight: FloatTensor<B>, options: &ConvOptions<2>) -> Result<FloatTensor<B>, String> {
    check_groups(options)?;
    if options.stride != [1, 1] {
        return Err(format!("{} takes stride-1 data gradients (strided ones go through strided_data_grad)", ConvKernel::Matmul));
    }
    let rows = B::channels_last_rows(&grad);
    let (dy, w) = (tensor::<B, 4>(grad), tensor::<B, 4>(weight));
    let [o, c, kh, kw] = w.dims();
    if rows && pointwise([kh, kw], options) {
        let [n, _, h, wd] = dy.dims();
        let dx = mm(channel_rows(dy).unsqueeze(), w.reshape([1, o, c])); // [1, N·H·W, C]
        return Ok(from_channel_rows(dx.squeeze_dim(0), [n, c, h, wd]).into_primitive().tensor());
    }
    if pointwise([kh, kw], options) {
        let [n, _, h, wd] = dy.dims();
        let dx = mm(w.reshape([1, o, c]).swap_dims(1, 2), dy.reshape([n, o, h * wd]));
        return Ok(dx.reshape([n, c, h, wd]).into_primitive().tensor());
    }
    let reach = |i: usize| options.dilation[i] * ([kh, kw][i] - 1);
    if (0..2).any(|i| options.padding[i] > reach(i)) {
        return Err(format!("{} cannot take a data gradient with padding wider than the kernel", ConvKernel::Matmul));
    }
    let padding: [usize; 2] = std::array::from_fn(|i| reach(i) - options.padding[i]);
    let flipped = w.flip([2, 3]).swap_dims(0, 1); // [C, O, kh, kw]
    let transposed = ConvOptions::new([1, 1], padding, options.dilation, 1);
    forward::<B>(dy.into_primitive().tensor(), flipped.into_primitive().tensor(), &transposed)
}

/// A weight `[O, C, kh, kw]` as `[O, kh·kw·C]`, each output's taps and channels in the
/// order of channels-last patches: one copy, except for a 1 × 1 kernel, whose memory is
/// already in that order (a permuted view would look non-contiguous to the reshape: Burn
/// compares even the strides of size-1 dimensions, and copied every 1 × 1 weight).
fn taps_then_channels<B: Im2col>(w: Tensor<B, 4>) -> Tensor<B, 2> {
    let [o, c, kh, kw] = w.dims();
    match kh * kw {
        1 => w.reshape([o, c]),
        _ => w.permute([0, 2, 3, 1]).reshape([o, kh * kw * c]),
    }
}

/// [`taps_then_channels`] undone: `[O, kh·kw·C]` as the `[O, C, kh, kw]` weight it belongs
/// to, a permuted view (copied where the optimiser needs it contiguous), or for a 1 × 1
/// kernel a contiguous reshape of the same memory.
fn channels_then_taps<B: Im2col>(w: Tensor<B, 2>, [kh, kw]: [usize; 2]) -> Tensor<B, 4> {
    let [o, k] = w.dims();
    let c = k / (kh * kw);
    match kh * kw {
        1 => w.reshape([o, c, 1, 1]),
        _ => w.reshape([o, kh, kw, c]).permute([0, 3, 1, 2]),
    }
}

/// `[N, C, H, W]` with channels-last memory as its `[N·H·W, C]` rows (a view).
fn channel_rows<B: Im2col>(t: Tensor<B, 4>) -> Tensor<B, 2> {
    let [n, c, h, w] = t.dims();
    t.permute([0, 2, 3, 1]).reshape([n * h * w, c])
}

/// The convolution's patches of channels-last `x` as rows, `[N·H'·W', kh·kw·C]`: `x`'s own
/// rows for a 1 × 1 one, else one copy ([`Im2col::im2col_rows`]).
fn patch_rows<B: Im2col>(x: Tensor<B, 4>, k: [usize; 2], o: &ConvOptions<2>) -> Tensor<B, 2> {
    match pointwise(k, o) {
        true => channel_rows(x),
        false => tensor(B::im2col_rows(x.into_primitive().tensor(), k, o)),
    }
}

/// `[N·H·W, C]` rows as the `[N, C, H, W]` tensor `shape`, channels-last in memory (a view).
fn from_channel_rows<B: Im2col>(rows: Tensor<B, 2>, [n, c, h, w]: [usize; 4]) -> Tensor<B, 4> {
    rows.reshape([n, h, w, c]).permute([0, 3, 1, 2])
}

/// The groups' partial products `[G, O, K]` added up (in f32, whatever their type).
fn summed<B: Im2col>(partial: Tensor<B, 3>) -> Tensor<B, 3> {
    let dtype = FloatDType::from(partial.dtype());
    match partial.dims()[0] {
        1 => partial,
        _ => partial.cast(FloatDType::F32).sum_dim(0).cast(dtype),
    }
}

/// `dW = Σ_g dY_g · cols(X_g)ᵀ` over `groups` groups of images.
pub fn weight_grad<B: Im2col>(x: FloatTensor<B>, grad: FloatTensor<B>, weight_shape: &Shape, options: &ConvOptions<2>, groups: usize) -> Result<FloatTensor<B>, String> {
    check_groups(options)?;
    let rows = B::channels_last_rows(&x);
    let (x, dy) = (tensor::<B, 4>(x), tensor::<B, 4>(grad));
    let (n, [_, o, oh, ow]) = (x.dims()[0], dy.dims());
    let (kh, kw) = (weight_shape[2], weight_shape[3]);
    if groups == 0 || !n.is_multiple_of(groups) {
        return Err(format!("{groups} groups do not divide a batch of {n}"));
    }
    if rows {
        // Σ over groups of rows of dYᵀ · patches: [G, O, R/G] · [G, R/G, kh·kw·C], R = N·H'·W'.
        let (c, r) = (weight_shape[1], n * oh * ow);
        let patches = patch_rows(x, [kh, kw], options).reshape([groups, r / groups, kh * kw * c]);
        let dyr = channel_rows(dy).reshape([groups, r / groups, o]);
        let dw = summed(mm(dyr.swap_dims(1, 2), patches)); // [O, (kh, kw, C)]
        return Ok(channels_then_taps(dw.reshape([o, kh * kw * c]), [kh, kw]).into_primitive().tensor());
    }
    let (per, l) = (n / groups, oh * ow);
    // [N, O, L] → [G, O, per·L] (a copy unless one image per group), as the patches are.
    let grouped = |t: Tensor<B, 3>, rows: usize| match per {
        1 => t,
        _ => t.reshape([groups, per, rows, l]).swap_dims(1, 2).reshape([groups, rows, per * l]),
    };
    let cols: Tensor<B, 3> = tensor(B::im2col(x.into_primitive().tensor(), [kh, kw], options, groups));
    let partial = mm(grouped(dy.reshape([n, o, l]), o), cols.swap_dims(1, 2)); // [G, O, C·k²]
    let dw = summed(partial).reshape([o, weight_shape[1], kh, kw]);
    Ok(dw.into_primitive().tensor())
}

/// How many image groups [`weight_grad`] splits a batch of `n` into for an `o × ck` weight
/// gradient: the fewest that give the matmul at least two 64×64 output tiles per SM,
/// keeping the partial products (`groups × o × ck`) within 2²⁵ elements; all `n` divide
/// evenly.
pub fn weight_grad_groups(n: usize, o: usize, ck: usize, sms: usize) -> usize {
    let tiles = o.div_ceil(64) * ck.div_ceil(64);
    let cap = ((1usize << 25) / (o * ck).max(1)).max(1);
    let fits: Vec<usize> = (1..=n).filter(|&g| n.is_multiple_of(g) && g <= cap).collect();
    fits.iter().copied().find(|g| g * tiles >= 2 * sms).unwrap_or_else(|| fits.last().copied().unwrap_or(1))
}

/// [`weight_grad`] with the groups [`weight_grad_groups`] picks for `sms` multiprocessors.
pub fn weight_grad_for<B: Im2col>(x: FloatTensor<B>, grad: FloatTensor<B>, weight_shape: &Shape, options: &ConvOptions<2>, sms: usize) -> Result<FloatTensor<B>, String> {
    let groups = weight_grad_groups(x.shape()[0], weight_shape[0], weight_shape[1] * weight_shape[2] * weight_shape[3], sms);
    weight_grad::<B>(x, grad, weight_shape, options, groups)
}

/// One pass (`x`, `weight`, output gradient `grad` as in `ModuleOps::conv2d*`; the data
/// pass stride 1), with the weight gradient's groups chosen for `sms` multiprocessors.
pub fn run<B: Im2col>(pass: Pass, x: FloatTensor<B>, weight: FloatTensor<B>, grad: FloatTensor<B>, options: &ConvOptions<2>, sms: usize) -> Result<FloatTensor<B>, String> {
    match pass {
        Pass::Forward => forward::<B>(x, weight, options),
        Pass::Data => data_grad::<B>(grad, weight, options),
        Pass::Weight => weight_grad_for::<B>(x, grad, &weight.shape(), options, sms),
    }
}
