//! Training-mode batch norm as one autodiff operation.
//!
//! Written with tensor operations, batch norm runs six kernels over the whole activation
//! forward (mean, centring, square, mean, scale, shift) and about ten backward (each autodiff
//! node's gradient its own kernels), and without Burn's operation fusion each reads and
//! writes the whole tensor: ResNet-50 has 53 of these layers. [`batch_norm_train`] computes
//! the same function in five passes: forward, the per-channel mean, the centred squares and
//! one per-channel affine map for the output; backward, one pass for the two per-channel
//! gradient sums and one affine map of `dy` and `x` for the input gradient:
//!
//! `dx = a·dy + b·x + d` with `a = γ/σ`, `b = −a·Σ(dy·(x−μ))/(N·σ²)`, `d = −a·Σdy/N − b·μ`,
//! `dγ = Σ(dy·(x−μ))/σ`, `dβ = Σdy` (`N` values per channel, `σ² = var + ε`, biased variance).
//!
//! A ReLU after the batch norm can be part of the operation: the output is clamped in the
//! forward map, and backward `dy` is zeroed where the output is not positive inside the two
//! passes (two passes fewer than a separate ReLU).
//!
//! On CubeCL backends the passes are kernels of this module (f32 tensors; others take the
//! tensor-operation path); on the CPU's Flex backend they are tensor operations, which is
//! also the reference the CubeCL kernels are tested against.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{CheckpointStrategy, NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use crate::{is, same_type, CudaBackend};

/// The per-channel passes of batch norm over `[B, C, L]` tensors (`L` = positions).
pub trait BatchNormKernels: Backend {
    /// `Σ x` over images and positions, per channel: `[C]`.
    fn channel_sum(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `Σ (x − mean)²` per channel.
    fn channel_centred_squares(x: FloatTensor<Self>, mean: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `(Σ g, Σ g·(x − mean))` per channel, `g` = `dy`, or `dy` where `relu_out > 0` and 0
    /// elsewhere (the gradient through a ReLU whose output was `relu_out`).
    fn channel_grad_sums(x: FloatTensor<Self>, dy: FloatTensor<Self>, mean: FloatTensor<Self>, relu_out: Option<FloatTensor<Self>>) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// `a·x + b` with per-channel `a`, `b`; with `relu`, `max(a·x + b, 0)`.
    fn channel_affine(x: FloatTensor<Self>, a: FloatTensor<Self>, b: FloatTensor<Self>, relu: bool) -> FloatTensor<Self>;
    /// `a·g + b·x + d` with per-channel `a`, `b`, `d`, `g` as in [`Self::channel_grad_sums`].
    fn channel_affine2(dy: FloatTensor<Self>, x: FloatTensor<Self>, a: FloatTensor<Self>, b: FloatTensor<Self>, d: FloatTensor<Self>, relu_out: Option<FloatTensor<Self>>) -> FloatTensor<Self>;
}

/// The passes as tensor operations, on any backend.
mod ops {
    use super::*;

    fn t<B: Backend, const D: usize>(x: FloatTensor<B>) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(x))
    }

    fn p<B: Backend, const D: usize>(x: Tensor<B, D>) -> FloatTensor<B> {
        x.into_primitive().tensor()
    }

    /// `[C]` → `[B, C, 1]`: a value per row of `[B, C, L]` (the broadcast Flex is fast at).
    fn per_row<B: Backend>(v: FloatTensor<B>, images: usize) -> Tensor<B, 3> {
        let v = t::<B, 1>(v);
        let c = v.dims()[0];
        v.reshape([1, c, 1]).repeat_dim(0, images)
    }

    fn sum<B: Backend>(x: Tensor<B, 3>) -> FloatTensor<B> {
        let c = x.dims()[1];
        p(x.sum_dim(2).sum_dim(0).reshape([c]))
    }

    pub(super) fn channel_sum<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
        sum(t::<B, 3>(x))
    }

    pub(super) fn channel_centred_squares<B: Backend>(x: FloatTensor<B>, mean: FloatTensor<B>) -> FloatTensor<B> {
        let x = t::<B, 3>(x);
        let images = x.dims()[0];
        sum((x - per_row(mean, images)).square())
    }

    /// `dy`, zeroed where `relu_out ≤ 0` when given.
    fn through_relu<B: Backend>(dy: FloatTensor<B>, relu_out: Option<FloatTensor<B>>) -> Tensor<B, 3> {
        let dy = t::<B, 3>(dy);
        match relu_out {
            Some(y) => dy.mask_fill(t::<B, 3>(y).lower_equal_elem(0.0), 0.0),
            None => dy,
        }
    }

    pub(super) fn channel_grad_sums<B: Backend>(x: FloatTensor<B>, dy: FloatTensor<B>, mean: FloatTensor<B>, relu_out: Option<FloatTensor<B>>) -> (FloatTensor<B>, FloatTensor<B>) {
        let (x, g) = (t::<B, 3>(x), through_relu::<B>(dy, relu_out));
        let images = x.dims()[0];
        (sum(g.clone()), sum(g * (x - per_row(mean, images))))
    }

    pub(super) fn channel_affine<B: Backend>(x: FloatTensor<B>, a: FloatTensor<B>, b: FloatTensor<B>, relu: bool) -> FloatTensor<B> {
        let x = t::<B, 3>(x);
        let images = x.dims()[0];
        let y = x * per_row(a, images) + per_row(b, images);
        p(if relu { burn::tensor::activation::relu(y) } else { y })
    }

    pub(super) fn channel_affine2<B: Backend>(dy: FloatTensor<B>, x: FloatTensor<B>, a: FloatTensor<B>, b: FloatTensor<B>, d: FloatTensor<B>, relu_out: Option<FloatTensor<B>>) -> FloatTensor<B> {
        let (g, x) = (through_relu::<B>(dy, relu_out), t::<B, 3>(x));
        let images = x.dims()[0];
        p(g * per_row(a, images) + x * per_row(b, images) + per_row(d, images))
    }
}

impl BatchNormKernels for Flex {
    fn channel_sum(x: FloatTensor<Self>) -> FloatTensor<Self> {
        ops::channel_sum::<Self>(x)
    }
    fn channel_centred_squares(x: FloatTensor<Self>, mean: FloatTensor<Self>) -> FloatTensor<Self> {
        ops::channel_centred_squares::<Self>(x, mean)
    }
    fn channel_grad_sums(x: FloatTensor<Self>, dy: FloatTensor<Self>, mean: FloatTensor<Self>, relu_out: Option<FloatTensor<Self>>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        ops::channel_grad_sums::<Self>(x, dy, mean, relu_out)
    }
    fn channel_affine(x: FloatTensor<Self>, a: FloatTensor<Self>, b: FloatTensor<Self>, relu: bool) -> FloatTensor<Self> {
        ops::channel_affine::<Self>(x, a, b, relu)
    }
    fn channel_affine2(dy: FloatTensor<Self>, x: FloatTensor<Self>, a: FloatTensor<Self>, b: FloatTensor<Self>, d: FloatTensor<Self>, relu_out: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        ops::channel_affine2::<Self>(dy, x, a, b, d, relu_out)
    }
}

/// The CubeCL kernels (their own module: CubeCL's `Tensor` is not Burn's).
mod kernel {
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::prelude::*;

    /// What [`channel_sums_kernel`] adds up.
    pub(super) const SUM: u32 = 0;
    pub(super) const CENTRED_SQUARES: u32 = 1;
    pub(super) const GRAD_SUMS: u32 = 2;

    /// Sums `part` over the cube's units (a power of two) through `shared`; unit 0 gets the sum.
    #[cube]
    fn cube_sum(part: f32, shared: &mut SharedMemory<f32>) -> f32 {
        let unit = UNIT_POS_X as usize;
        shared[unit] = part;
        sync_cube();
        let mut half = CUBE_DIM_X as usize / 2;
        while half > 0 {
            if unit < half {
                shared[unit] = shared[unit] + shared[unit + half];
            }
            sync_cube();
            half /= 2;
        }
        shared[0]
    }

    /// Cube `(i, c)` adds up channel `c` of image `i` of the contiguous `[B, C, L]` tensors
    /// `x` (and `dy`) into `first[c, i]` (and `second[c, i]`): by `mode`, `Σ x`,
    /// `Σ (x − centre[c])²`, or `Σ g` and `Σ g·(x − centre[c])` with `g = dy`, or with
    /// `masked` `dy` where `relu_out > 0` and 0 elsewhere.
    #[cube(launch)]
    pub(super) fn channel_sums_kernel(
        x: &Tensor<f32>,
        dy: &Tensor<f32>,
        relu_out: &Tensor<f32>,
        centre: &Tensor<f32>,
        first: &mut Tensor<f32>,
        second: &mut Tensor<f32>,
        channels: u32,
        len: u32,
        #[comptime] units: usize,
        #[comptime] mode: u32,
        #[comptime] masked: bool,
    ) {
        let image = CUBE_POS_X as usize;
        let c = CUBE_POS_Y as usize;
        let images = CUBE_COUNT_X as usize;
        let len = len as usize;
        let base = (image * channels as usize + c) * len;
        let unit = UNIT_POS_X as usize;
        let m = centre[c];
        let mut a = 0.0f32;
        let mut b = 0.0f32;
        let mut j = unit;
        while j < len {
            let v = x[base + j];
            if comptime![mode == SUM] {
                a += v;
            } else if comptime![mode == CENTRED_SQUARES] {
                a += (v - m) * (v - m);
            } else {
                let mut g = dy[base + j];
                if masked {
                    if relu_out[base + j] <= 0.0 {
                        g = 0.0;
                    }
                }
                a += g;
                b += g * (v - m);
            }
            j += units;
        }
        let mut shared = SharedMemory::<f32>::new(units);
        let total_a = cube_sum(a, &mut shared);
        if comptime![mode == GRAD_SUMS] {
            sync_cube();
            let total_b = cube_sum(b, &mut shared);
            if unit == 0 {
                second[c * images + image] = total_b;
            }
        }
        if unit == 0 {
            first[c * images + image] = total_a;
        }
    }

    /// `out = a[c]·x + b[c]` (with `relu`, at least 0), or with `two`
    /// `out = a[c]·g + b[c]·x + d[c]` (`g` = `dy`, with `relu` 0 where `relu_out ≤ 0`), over
    /// contiguous `[B, C, L]` tensors; one element per unit, cubes over a 2-D grid.
    #[cube(launch)]
    pub(super) fn channel_affine_kernel(
        dy: &Tensor<f32>,
        relu_out: &Tensor<f32>,
        x: &Tensor<f32>,
        a: &Tensor<f32>,
        b: &Tensor<f32>,
        d: &Tensor<f32>,
        out: &mut Tensor<f32>,
        channels: u32,
        len: u32,
        #[comptime] two: bool,
        #[comptime] relu: bool,
    ) {
        let i = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize * CUBE_DIM_X as usize + UNIT_POS_X as usize;
        if i >= out.len() {
            terminate!();
        }
        let c = (i / len as usize) % channels as usize;
        if two {
            let mut g = dy[i];
            if relu {
                if relu_out[i] <= 0.0 {
                    g = 0.0;
                }
            }
            out[i] = a[c] * g + b[c] * x[i] + d[c];
        } else {
            let mut y = a[c] * x[i] + b[c];
            if relu {
                if y < 0.0 {
                    y = 0.0;
                }
            }
            out[i] = y;
        }
    }
}

/// Units per cube for sums over rows of `len`: a power of two from 32 to 256.
fn sum_units(len: usize) -> usize {
    len.next_power_of_two().clamp(32, 256)
}

fn f32_cube<R: CubeRuntime>(t: &CubeTensor<R>) -> bool {
    t.dtype == DType::F32
}

/// Per-channel sums by `mode` on CubeCL: partial sums per image from the kernel, then a sum
/// over images.
fn channel_sums_on<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: CubeTensor<R>,
    dy: Option<CubeTensor<R>>,
    centre: Option<CubeTensor<R>>,
    relu_out: Option<CubeTensor<R>>,
    mode: u32,
) -> (FloatTensor<CubeBackend<R, F, I, BT>>, FloatTensor<CubeBackend<R, F, I, BT>>) {
    let [images, channels, len] = x.shape().dims::<3>();
    let x = into_contiguous(x);
    let (client, device) = (x.client.clone(), x.device.clone());
    let dy = dy.map(into_contiguous).unwrap_or_else(|| x.clone());
    let masked = relu_out.is_some();
    let relu_out = relu_out.map(into_contiguous).unwrap_or_else(|| x.clone());
    let centre = centre.map(into_contiguous).unwrap_or_else(|| empty_device_dtype(client.clone(), device.clone(), Shape::new([channels]), DType::F32));
    let partial = || empty_device_dtype(client.clone(), device.clone(), Shape::new([channels, images]), DType::F32);
    let (first, second) = (partial(), partial());
    let units = sum_units(len);
    kernel::channel_sums_kernel::launch::<R>(
        &client,
        CubeCount::Static(images as u32, channels as u32, 1),
        CubeDim::new_1d(units as u32),
        x.into_tensor_arg(),
        dy.into_tensor_arg(),
        relu_out.into_tensor_arg(),
        centre.into_tensor_arg(),
        first.clone().into_tensor_arg(),
        second.clone().into_tensor_arg(),
        channels as u32,
        len as u32,
        units,
        mode,
        masked,
    );
    let total = |t: CubeTensor<R>| {
        let t = Tensor::<CubeBackend<R, F, I, BT>, 2>::from_primitive(TensorPrimitive::Float(t));
        t.sum_dim(1).reshape([channels]).into_primitive().tensor()
    };
    (total(first), total(second))
}

/// `a·x + b` (`dy` and `d` absent) or `a·dy + b·x + d` per channel on CubeCL; with `relu`,
/// the first clamped at 0, the second's `dy` zeroed where `relu_out ≤ 0`.
fn channel_affine_on<R: CubeRuntime>(dy: Option<CubeTensor<R>>, x: CubeTensor<R>, a: CubeTensor<R>, b: CubeTensor<R>, d: Option<CubeTensor<R>>, relu: bool, relu_out: Option<CubeTensor<R>>) -> CubeTensor<R> {
    let [_, channels, len] = x.shape().dims::<3>();
    let x = into_contiguous(x);
    let out = empty_device_dtype(x.client.clone(), x.device.clone(), x.shape(), DType::F32);
    let n = x.shape().num_elements();
    if n == 0 {
        return out;
    }
    let two = dy.is_some();
    let dy = dy.map(into_contiguous).unwrap_or_else(|| x.clone());
    let d = d.map(into_contiguous).unwrap_or_else(|| b.clone());
    let relu_out = relu_out.map(into_contiguous).unwrap_or_else(|| x.clone());
    const UNITS: usize = 256;
    let cubes = n.div_ceil(UNITS);
    let (wide, high) = (cubes.min(65_535), cubes.div_ceil(65_535));
    kernel::channel_affine_kernel::launch::<R>(
        &x.client.clone(),
        CubeCount::Static(wide as u32, high as u32, 1),
        CubeDim::new_1d(UNITS as u32),
        dy.into_tensor_arg(),
        relu_out.into_tensor_arg(),
        x.into_tensor_arg(),
        into_contiguous(a).into_tensor_arg(),
        into_contiguous(b).into_tensor_arg(),
        d.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        channels as u32,
        len as u32,
        two,
        relu,
    );
    out
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> BatchNormKernels for CubeBackend<R, F, I, BT> {
    fn channel_sum(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if !f32_cube(&x) {
            return ops::channel_sum::<Self>(x);
        }
        channel_sums_on::<R, F, I, BT>(x, None, None, None, kernel::SUM).0
    }
    fn channel_centred_squares(x: FloatTensor<Self>, mean: FloatTensor<Self>) -> FloatTensor<Self> {
        if !f32_cube(&x) {
            return ops::channel_centred_squares::<Self>(x, mean);
        }
        channel_sums_on::<R, F, I, BT>(x, None, Some(mean), None, kernel::CENTRED_SQUARES).0
    }
    fn channel_grad_sums(x: FloatTensor<Self>, dy: FloatTensor<Self>, mean: FloatTensor<Self>, relu_out: Option<FloatTensor<Self>>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if !f32_cube(&x) || !f32_cube(&dy) || relu_out.as_ref().is_some_and(|y| !f32_cube(y)) {
            return ops::channel_grad_sums::<Self>(x, dy, mean, relu_out);
        }
        channel_sums_on::<R, F, I, BT>(x, Some(dy), Some(mean), relu_out, kernel::GRAD_SUMS)
    }
    fn channel_affine(x: FloatTensor<Self>, a: FloatTensor<Self>, b: FloatTensor<Self>, relu: bool) -> FloatTensor<Self> {
        if !f32_cube(&x) {
            return ops::channel_affine::<Self>(x, a, b, relu);
        }
        channel_affine_on(None, x, a, b, None, relu, None)
    }
    fn channel_affine2(dy: FloatTensor<Self>, x: FloatTensor<Self>, a: FloatTensor<Self>, b: FloatTensor<Self>, d: FloatTensor<Self>, relu_out: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        if !f32_cube(&x) || !f32_cube(&dy) || relu_out.as_ref().is_some_and(|y| !f32_cube(y)) {
            return ops::channel_affine2::<Self>(dy, x, a, b, d, relu_out);
        }
        let relu = relu_out.is_some();
        channel_affine_on(Some(dy), x, a, b, Some(d), relu, relu_out)
    }
}

/// The batch statistics, and the per-channel factors of the forward map `y = a·x + b`.
struct Forward<B: Backend> {
    mean: FloatTensor<B>,
    var: FloatTensor<B>,
    inv_std: FloatTensor<B>,
    y: FloatTensor<B>,
}

fn forward<B: BatchNormKernels>(x: FloatTensor<B>, gamma: FloatTensor<B>, beta: FloatTensor<B>, epsilon: f64, relu: bool) -> Forward<B> {
    let [images, _, len] = x.shape().dims::<3>();
    let n = (images * len) as f32;
    let mean = B::float_div_scalar(B::channel_sum(x.clone()), n.into());
    let var = B::float_div_scalar(B::channel_centred_squares(x.clone(), mean.clone()), n.into());
    let inv_std = B::float_recip(B::float_sqrt(B::float_add_scalar(var.clone(), (epsilon as f32).into())));
    let a = B::float_mul(gamma, inv_std.clone());
    let b = B::float_sub(beta, B::float_mul(mean.clone(), a.clone()));
    let y = B::channel_affine(x, a, b, relu);
    Forward { mean, var, inv_std, y }
}

/// Batch norm over `[B, C, L]` (followed by a ReLU with `relu`) as one autodiff operation
/// of `x`, `γ` and `β`; also the batch mean and (biased) variance, without gradient.
fn autodiff_batch_norm<B: BatchNormKernels, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    gamma: FloatTensor<Autodiff<B, C>>,
    beta: FloatTensor<Autodiff<B, C>>,
    epsilon: f64,
    relu: bool,
) -> (FloatTensor<Autodiff<B, C>>, FloatTensor<B>, FloatTensor<B>) {
    #[derive(Debug)]
    struct BatchNormBackward;

    impl<B: BatchNormKernels> Backward<B, 3> for BatchNormBackward {
        /// `x`, `γ`, the batch mean, `1/σ`, and the output when a ReLU ends the operation
        /// (kept alive anyway as the next layer's input; its sign is the ReLU's mask).
        type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, Option<FloatTensor<B>>);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node_x, node_gamma, node_beta] = ops.parents;
            let dy = grads.consume::<B>(&ops.node);
            let (x, gamma, mean, inv_std, relu_out) = ops.state;
            let [images, _, len] = x.shape().dims::<3>();
            let n = (images * len) as f32;
            // Σg and Σg·(x−μ), g the gradient past the ReLU (if any).
            let (sum_dy, sum_dy_xc) = B::channel_grad_sums(x.clone(), dy.clone(), mean.clone(), relu_out.clone());
            let d_gamma = B::float_mul(sum_dy_xc, inv_std.clone());
            if let Some(node) = node_x {
                let a = B::float_mul(gamma, inv_std.clone());
                // b = −a·dγ·(1/σ)/N, d = −a·Σdy/N − b·μ
                let b = B::float_div_scalar(B::float_neg(B::float_mul(B::float_mul(a.clone(), d_gamma.clone()), inv_std)), n.into());
                let d = B::float_sub(B::float_neg(B::float_div_scalar(B::float_mul(a.clone(), sum_dy.clone()), n.into())), B::float_mul(b.clone(), mean));
                grads.register::<B>(node.id, B::channel_affine2(dy, x, a, b, d, relu_out));
            }
            if let Some(node) = node_gamma {
                grads.register::<B>(node.id, d_gamma);
            }
            if let Some(node) = node_beta {
                grads.register::<B>(node.id, sum_dy);
            }
        }
    }

    let fwd = forward::<B>(x.primitive.clone(), gamma.primitive.clone(), beta.primitive.clone(), epsilon, relu);
    let y = match BatchNormBackward.prepare::<C>([x.node.clone(), gamma.node.clone(), beta.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let relu_out = relu.then(|| fwd.y.clone());
            prep.finish((x.primitive, gamma.primitive, fwd.mean.clone(), fwd.inv_std, relu_out), fwd.y)
        }
        OpsKind::UnTracked(prep) => prep.finish(fwd.y),
    };
    (y, fwd.mean, fwd.var)
}

/// Training-mode batch norm of `x` (`[B, C, H, W]`) with scale `gamma` and shift `beta`
/// (`[C]`), followed by a ReLU with `relu`, as one autodiff operation: `(y, batch mean,
/// biased batch variance)`, the statistics without gradient. On the autodiff backends of CUDA, Flex (and, with the
/// `wgpu` feature, wgpu); `Err` with the inputs back on any other backend.
#[allow(clippy::type_complexity)]
pub fn batch_norm_train<B: Backend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    epsilon: f64,
    relu: bool,
) -> Result<(Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>), (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>)> {
    let inputs = (x, gamma, beta);
    let inputs = match run_as::<B, CudaBackend>(inputs, epsilon, relu) {
        Ok(out) => return Ok(out),
        Err(inputs) => inputs,
    };
    #[cfg(feature = "wgpu")]
    let inputs = match run_as::<B, crate::WgpuBackend>(inputs, epsilon, relu) {
        Ok(out) => return Ok(out),
        Err(inputs) => inputs,
    };
    run_as::<B, Flex>(inputs, epsilon, relu)
}

#[allow(clippy::type_complexity)]
fn run_as<B: Backend, T: BatchNormKernels>(
    (x, gamma, beta): (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>),
    epsilon: f64,
    relu: bool,
) -> Result<(Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>), (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>)> {
    if !is::<B, Autodiff<T>>() {
        return Err((x, gamma, beta));
    }
    let (y, mean, var) = batch_norm_on::<T>(same_type(x), same_type(gamma), same_type(beta), epsilon, relu);
    Ok((same_type(y), same_type(mean), same_type(var)))
}

/// [`batch_norm_train`] on `Autodiff<T>` for any `T` with the kernels.
pub fn batch_norm_on<T: BatchNormKernels>(
    x: Tensor<Autodiff<T>, 4>,
    gamma: Tensor<Autodiff<T>, 1>,
    beta: Tensor<Autodiff<T>, 1>,
    epsilon: f64,
    relu: bool,
) -> (Tensor<Autodiff<T>, 4>, Tensor<Autodiff<T>, 1>, Tensor<Autodiff<T>, 1>) {
    let [images, channels, h, w] = x.dims();
    let prim = |t: Tensor<Autodiff<T>, 1>| t.into_primitive().tensor();
    let x = x.reshape([images, channels, h * w]).into_primitive().tensor();
    let (y, mean, var) = autodiff_batch_norm::<T, NoCheckpointing>(x, prim(gamma), prim(beta), epsilon, relu);
    let y = Tensor::<Autodiff<T>, 3>::from_primitive(TensorPrimitive::Float(y)).reshape([images, channels, h, w]);
    let stat = |s: FloatTensor<T>| Tensor::<Autodiff<T>, 1>::from_inner(Tensor::from_primitive(TensorPrimitive::Float(s)));
    (y, stat(mean), stat(var))
}
