//! Convolutions as matmuls on cubek's tiled matmul: the plan's `matmul` kernel
//! ([`ConvKernel::Matmul`]).
//!
//! A convolution is a matmul per image, `Y_n = W·cols(X_n)`, with `W` as `[O, C·kh·kw]` and
//! `cols(X_n)` the `[C·kh·kw, H'·W']` matrix of input patches (im2col). For a 1×1, stride-1,
//! unpadded convolution (33 of ResNet-50's 53) `cols(X_n)` is `X_n` itself, an NCHW view: no
//! copy at all. For the others it is built from `kh·kw` shifted (strided) slices of the
//! zero-padded input, stacked: plain copies, `kh·kw` times the input's size. On CUDA the
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

use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{FloatDType, Shape, Slice, Tensor, TensorMetadata, TensorPrimitive};

use crate::conv::output_size;
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

fn pointwise(k: [usize; 2], options: &ConvOptions<2>) -> bool {
    k == [1, 1] && options.stride == [1, 1] && options.padding == [0, 0]
}

/// `t` with `[ph, pw]` zero rows and columns on each side, in `t`'s own float type.
fn pad_zeros<B: MatmulKernels>(t: Tensor<B, 4>, [ph, pw]: [usize; 2]) -> Tensor<B, 4> {
    let dtype = FloatDType::from(t.dtype());
    let device = t.device();
    let zeros = |shape: [usize; 4]| Tensor::<B, 4>::zeros(shape, &device).cast(dtype);
    let [n, c, h, _] = t.dims();
    let t = if pw > 0 { Tensor::cat(vec![zeros([n, c, h, pw]), t, zeros([n, c, h, pw])], 3) } else { t };
    let w = t.dims()[3];
    if ph > 0 {
        Tensor::cat(vec![zeros([n, c, ph, w]), t, zeros([n, c, ph, w])], 2)
    } else {
        t
    }
}

/// `[N, C, H, W]` → `[N, C·kh·kw, H'·W']`, rows channel-major and tap-minor like the
/// weight's `[O, C, kh, kw]` flattened.
fn im2col<B: MatmulKernels>(x: Tensor<B, 4>, k: [usize; 2], o: &ConvOptions<2>) -> Tensor<B, 3> {
    let [n, c, h, w] = x.dims();
    let [oh, ow] = output_size([h, w], k, o);
    if pointwise(k, o) {
        return x.reshape([n, c, h * w]);
    }
    let xp = pad_zeros(x, o.padding);
    let all = Slice::new(0, None, 1);
    let taps: Vec<Tensor<B, 4>> = (0..k[0])
        .flat_map(|i| (0..k[1]).map(move |j| (i, j)))
        .map(|(i, j)| {
            let (r0, c0) = ((i * o.dilation[0]) as isize, (j * o.dilation[1]) as isize);
            let rows = Slice::new(r0, Some(r0 + ((oh - 1) * o.stride[0]) as isize + 1), o.stride[0] as isize);
            let cols = Slice::new(c0, Some(c0 + ((ow - 1) * o.stride[1]) as isize + 1), o.stride[1] as isize);
            xp.clone().slice([all, all, rows, cols])
        })
        .collect();
    Tensor::stack::<5>(taps, 2).reshape([n, c * k[0] * k[1], oh * ow])
}

/// `y = conv(x, w)`.
pub fn forward<B: MatmulKernels>(x: FloatTensor<B>, weight: FloatTensor<B>, options: &ConvOptions<2>) -> Result<FloatTensor<B>, String> {
    check_groups(options)?;
    let (x, w) = (tensor::<B, 4>(x), tensor::<B, 4>(weight));
    let ([n, _, h, wd], [o, c, kh, kw]) = (x.dims(), w.dims());
    let [oh, ow] = output_size([h, wd], [kh, kw], options);
    let y = mm(w.reshape([1, o, c * kh * kw]), im2col(x, [kh, kw], options));
    Ok(y.reshape([n, o, oh, ow]).into_primitive().tensor())
}

/// `dx` of a stride-1 convolution, from the output gradient and the weight.
pub fn data_grad<B: MatmulKernels>(grad: FloatTensor<B>, weight: FloatTensor<B>, options: &ConvOptions<2>) -> Result<FloatTensor<B>, String> {
    check_groups(options)?;
    if options.stride != [1, 1] {
        return Err(format!("{} takes stride-1 data gradients (strided ones go through strided_data_grad)", ConvKernel::Matmul));
    }
    let (dy, w) = (tensor::<B, 4>(grad), tensor::<B, 4>(weight));
    let [o, c, kh, kw] = w.dims();
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

/// `dW = Σ_g dY_g · cols(X_g)ᵀ` over `groups` groups of images.
pub fn weight_grad<B: MatmulKernels>(x: FloatTensor<B>, grad: FloatTensor<B>, weight_shape: &Shape, options: &ConvOptions<2>, groups: usize) -> Result<FloatTensor<B>, String> {
    check_groups(options)?;
    let (x, dy) = (tensor::<B, 4>(x), tensor::<B, 4>(grad));
    let ([n, c, _, _], [_, o, oh, ow]) = (x.dims(), dy.dims());
    let (kh, kw) = (weight_shape[2], weight_shape[3]);
    if groups == 0 || !n.is_multiple_of(groups) {
        return Err(format!("{groups} groups do not divide a batch of {n}"));
    }
    let (per, l, ck) = (n / groups, oh * ow, c * kh * kw);
    // [N, rows, L] → [G, rows, per·L] (a copy unless one image per group).
    let grouped = |t: Tensor<B, 3>, rows: usize| match per {
        1 => t,
        _ => t.reshape([groups, per, rows, l]).swap_dims(1, 2).reshape([groups, rows, per * l]),
    };
    let dtype = FloatDType::from(dy.dtype());
    let cols = grouped(im2col(x, [kh, kw], options), ck);
    let partial = mm(grouped(dy.reshape([n, o, l]), o), cols.swap_dims(1, 2)); // [G, O, C·k²]
    let dw = partial.cast(FloatDType::F32).sum_dim(0).cast(dtype).reshape([o, c, kh, kw]);
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
pub fn weight_grad_for<B: MatmulKernels>(x: FloatTensor<B>, grad: FloatTensor<B>, weight_shape: &Shape, options: &ConvOptions<2>, sms: usize) -> Result<FloatTensor<B>, String> {
    let groups = weight_grad_groups(x.shape()[0], weight_shape[0], weight_shape[1] * weight_shape[2] * weight_shape[3], sms);
    weight_grad::<B>(x, grad, weight_shape, options, groups)
}

/// One pass (`x`, `weight`, output gradient `grad` as in `ModuleOps::conv2d*`; the data
/// pass stride 1), with the weight gradient's groups chosen for `sms` multiprocessors.
pub fn run<B: MatmulKernels>(pass: Pass, x: FloatTensor<B>, weight: FloatTensor<B>, grad: FloatTensor<B>, options: &ConvOptions<2>, sms: usize) -> Result<FloatTensor<B>, String> {
    match pass {
        Pass::Forward => forward::<B>(x, weight, options),
        Pass::Data => data_grad::<B>(grad, weight, options),
        Pass::Weight => weight_grad_for::<B>(x, grad, &weight.shape(), options, sms),
    }
}
