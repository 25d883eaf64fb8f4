//! 1×1, stride-1, unpadded convolutions as matmuls on the NCHW tensors themselves: the
//! plan's `matmul` kernel ([`ConvKernel::Matmul`]).
//!
//! Such a convolution is a matmul per image, `Y_n = W·X_n` with `X_n` the `[C, H·W]` view of
//! image n, so no im2col, no layout change and no copy is needed; on CUDA the products run on
//! cubek's tiled matmul (the explicit one of [`MatmulKernels`]). They are 33 of ResNet-50's 53
//! convolutions. The weight gradient `Σ_n dY_n·X_nᵀ` is one long reduction over the batch's
//! pixels; it runs as a batched matmul over groups of images, partial products summed after,
//! so the small `O × C` output still spreads over every SM.

use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{FloatDType, Shape, Tensor, TensorMetadata, TensorPrimitive};

use crate::matmul::MatmulKernels;
use crate::plan::{ConvKernel, Pass};

fn tensor<B: MatmulKernels, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn mm<B: MatmulKernels>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 3> {
    tensor(B::mm(a.into_primitive().tensor(), b.into_primitive().tensor()))
}

/// Refuses what is not a 1×1, stride-1, unpadded, ungrouped convolution.
fn check(weight: &Shape, options: &ConvOptions<2>) -> Result<(), String> {
    let pointwise = weight[2] == 1 && weight[3] == 1 && options.stride == [1, 1] && options.padding == [0, 0] && options.groups == 1;
    match pointwise {
        true => Ok(()),
        false => Err(format!("{} takes only 1×1, stride-1, unpadded convolutions", ConvKernel::Matmul)),
    }
}

/// `y = conv(x, w)`: `[1, O, C] · [N, C, H·W]`, the weight broadcast over the images.
pub fn forward<B: MatmulKernels>(x: FloatTensor<B>, weight: FloatTensor<B>, options: &ConvOptions<2>) -> Result<FloatTensor<B>, String> {
    check(&weight.shape(), options)?;
    let (x, w) = (tensor::<B, 4>(x), tensor::<B, 4>(weight));
    let ([n, c, h, wd], o) = (x.dims(), w.dims()[0]);
    let y = mm(w.reshape([1, o, c]), x.reshape([n, c, h * wd]));
    Ok(y.reshape([n, o, h, wd]).into_primitive().tensor())
}

/// `dx = Wᵀ · dY_n`: `[1, C, O] · [N, O, H·W]`.
pub fn data_grad<B: MatmulKernels>(grad: FloatTensor<B>, weight: FloatTensor<B>, options: &ConvOptions<2>) -> Result<FloatTensor<B>, String> {
    check(&weight.shape(), options)?;
    let (dy, w) = (tensor::<B, 4>(grad), tensor::<B, 4>(weight));
    let ([n, o, h, wd], c) = (dy.dims(), w.dims()[1]);
    let dx = mm(w.reshape([1, o, c]).swap_dims(1, 2), dy.reshape([n, o, h * wd]));
    Ok(dx.reshape([n, c, h, wd]).into_primitive().tensor())
}

/// `dW = Σ_g dY_g · X_gᵀ` over `groups` groups of images, one batched matmul (each group's
/// images side by side along the reduction), the partial products summed in f32.
pub fn weight_grad<B: MatmulKernels>(x: FloatTensor<B>, grad: FloatTensor<B>, weight_shape: &Shape, options: &ConvOptions<2>, groups: usize) -> Result<FloatTensor<B>, String> {
    check(weight_shape, options)?;
    let (x, dy) = (tensor::<B, 4>(x), tensor::<B, 4>(grad));
    let ([n, c, h, w], o) = (x.dims(), dy.dims()[1]);
    if groups == 0 || !n.is_multiple_of(groups) {
        return Err(format!("{groups} groups do not divide a batch of {n}"));
    }
    let (per, hw) = (n / groups, h * w);
    // [N, ch, H, W] → [G, ch, per·HW] (a copy unless one image per group).
    let rows = |t: Tensor<B, 4>, ch: usize| match per {
        1 => t.reshape([groups, ch, hw]),
        _ => t.reshape([groups, per, ch, hw]).swap_dims(1, 2).reshape([groups, ch, per * hw]),
    };
    let dtype = FloatDType::from(dy.dtype());
    let partial = mm(rows(dy, o), rows(x, c).swap_dims(1, 2)); // [G, O, C]
    let dw = partial.cast(FloatDType::F32).sum_dim(0).cast(dtype).reshape([o, c, 1, 1]);
    Ok(dw.into_primitive().tensor())
}

/// How many image groups [`weight_grad`] splits a batch of `n` into: the fewest that give
/// the matmul at least two 64×64 output tiles per SM, keeping the partial products
/// (`groups × o × c`) within 2²⁵ elements; all `n` divide evenly.
pub fn weight_grad_groups(n: usize, o: usize, c: usize, sms: usize) -> usize {
    let tiles = o.div_ceil(64) * c.div_ceil(64);
    let cap = ((1usize << 25) / (o * c).max(1)).max(1);
    let fits: Vec<usize> = (1..=n).filter(|&g| n.is_multiple_of(g) && g <= cap).collect();
    fits.iter().copied().find(|g| g * tiles >= 2 * sms).unwrap_or_else(|| fits.last().copied().unwrap_or(1))
}

/// One pass (`x`, `weight`, output gradient `grad` as in `ModuleOps::conv2d*`), with the
/// weight gradient's groups chosen for `sms` streaming multiprocessors.
pub fn run<B: MatmulKernels>(pass: Pass, x: FloatTensor<B>, weight: FloatTensor<B>, grad: FloatTensor<B>, options: &ConvOptions<2>, sms: usize) -> Result<FloatTensor<B>, String> {
    match pass {
        Pass::Forward => forward::<B>(x, weight, options),
        Pass::Data => data_grad::<B>(grad, weight, options),
        Pass::Weight => {
            let (n, ws) = (x.shape()[0], weight.shape());
            let groups = weight_grad_groups(n, ws[0], ws[1], sms);
            weight_grad::<B>(x, grad, &ws, options, groups)
        }
    }
}
