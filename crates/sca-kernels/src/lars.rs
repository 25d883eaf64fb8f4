//! One LARC + momentum-SGD step of a parameter in one or two kernel launches.
//!
//! Written with tensor operations, the step of one parameter (`sca_optim::Lars`: two norms,
//! the trust ratio and its masks, weight decay, momentum, the update) is about thirty
//! kernels, most of them on one-element tensors; SwAV adapts every parameter, so a
//! ResNet-50 step launched about 4,500 of them in the optimiser alone. [`lars_step`] runs
//! the same arithmetic in the same order in two: one kernel for both squared norms (partial
//! sums per cube), and one element-wise kernel whose cubes each add up the partials, derive
//! the factors from the norms and write the new parameter and momentum buffer. A parameter
//! of at most [`INLINE_NORMS_MAX`] values (batch norm's γ and β, biases, the smallest
//! weights: 95 of the 149 parameters of a ResNet-50 SwAV step) takes one: each cube of the update kernel computes both norms over the whole parameter
//! itself, a few loads per unit, where a launch of its own costs more than the reads.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use crate::{is, same_type, CudaBackend};

/// The hyper-parameters of one step (see `sca_optim::Lars` for the update).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LarsStep {
    pub lr: f64,
    pub weight_decay: f64,
    /// 0: no momentum buffer.
    pub momentum: f64,
    /// The LARC adaptation (else plain SGD with weight decay).
    pub lars: bool,
    pub trust_coefficient: f64,
    pub clip: bool,
    pub eps: f64,
}

/// The CubeCL kernels (their own module: CubeCL's `Tensor` is not Burn's).
mod kernel {
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::prelude::*;

    use crate::cube_util::cube_sum;

    pub(super) const UNITS: usize = 256;

    /// Cube `i` of `P` adds up `p²` and `g²` over its grid-stride share of the elements into
    /// `partial[i]` and `partial[P + i]`.
    #[cube(launch)]
    pub(super) fn square_norms_kernel(p: &Tensor<f32>, g: &Tensor<f32>, partial: &mut Tensor<f32>) {
        let cubes = CUBE_COUNT_X as usize;
        let cube = CUBE_POS_X as usize;
        let stride = cubes * UNITS;
        let mut sp = 0.0f32;
        let mut sg = 0.0f32;
        let mut j = cube * UNITS + UNIT_POS_X as usize;
        while j < p.len() {
            sp += p[j] * p[j];
            sg += g[j] * g[j];
            j += stride;
        }
        let mut shared = SharedMemory::<f32>::new(UNITS);
        let total_p = cube_sum(sp, &mut shared);
        let total_g = cube_sum(sg, &mut shared);
        if UNIT_POS_X == 0 {
            partial[cube] = total_p;
            partial[cubes + cube] = total_g;
        }
    }

    /// The step of every element: `g' = (g + decay·p)·factor` (with `lars`, factors from
    /// `‖p‖²` and `‖g‖²`, each cube adding up the `P` partial sums of each in `partial`, or
    /// with `norms_inline` the squares of all of `p` and `g` itself; else `decay = wd`,
    /// `factor = 1`), `buf' = momentum·buf + g'` (`g'` without
    /// `had_buffer`), `p' = p − lr·buf'` (`lr·g'` without `with_momentum`). The cubes go
    /// over the elements in grid strides.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lars_update_kernel(
        p: &Tensor<f32>,
        g: &Tensor<f32>,
        buf: &Tensor<f32>,
        partial: &Tensor<f32>,
        p_out: &mut Tensor<f32>,
        buf_out: &mut Tensor<f32>,
        lr: f32,
        wd: f32,
        momentum: f32,
        trust: f32,
        eps: f32,
        #[comptime] lars: bool,
        #[comptime] norms_inline: bool,
        #[comptime] clip: bool,
        #[comptime] decay_on: bool,
        #[comptime] with_momentum: bool,
        #[comptime] had_buffer: bool,
    ) {
        let mut factor = 1.0f32;
        let mut decay = wd;
        if lars {
            let mut sp = 0.0f32;
            let mut sg = 0.0f32;
            let mut j = UNIT_POS_X as usize;
            if norms_inline {
                while j < p.len() {
                    sp += p[j] * p[j];
                    sg += g[j] * g[j];
                    j += UNITS;
                }
            } else {
                let parts = partial.len() / 2;
                while j < parts {
                    sp += partial[j];
                    sg += partial[parts + j];
                    j += UNITS;
                }
            }
            let mut shared = SharedMemory::<f32>::new(UNITS);
            // As the tensor version: denom = ‖g‖ + ‖p‖·wd + eps, a = ‖p‖·trust / denom.
            let p_norm = f32::sqrt(cube_sum(sp, &mut shared));
            let g_norm = f32::sqrt(cube_sum(sg, &mut shared));
            let denom = g_norm + p_norm * wd + eps;
            let mut adaptive = p_norm * trust / denom;
            if clip {
                if lr > 0.0 {
                    adaptive /= lr;
                    if adaptive > 1.0 {
                        adaptive = 1.0;
                    }
                } else {
                    adaptive = 1.0;
                }
            }
            if p_norm > 0.0 && g_norm > 0.0 {
                factor = adaptive;
            } else {
                decay = 0.0;
            }
        }
        let mut i = CUBE_POS_X as usize * UNITS + UNIT_POS_X as usize;
        while i < p.len() {
            let mut step = g[i];
            if decay_on {
                step += p[i] * decay;
            }
            if lars {
                step *= factor;
            }
            if with_momentum {
                if had_buffer {
                    step += buf[i] * momentum;
                }
                buf_out[i] = step;
            }
            p_out[i] = p[i] - step * lr;
            i += CUBE_COUNT_X as usize * UNITS;
        }
    }
}

/// Parameters of at most this many values have their norms computed inside the update
/// kernel (16 per unit at most, in at most 16 cubes) instead of by a launch of their own.
pub const INLINE_NORMS_MAX: usize = 16 * kernel::UNITS;

/// Cubes of the update kernel at most: enough to keep every SM of an H100/H200 busy (about
/// eight per SM), few enough that each adding up the norms' partial sums costs nothing.
const UPDATE_CUBES: usize = 1024;

/// [`lars_step`] on f32 CubeCL tensors of the same shape.
fn lars_step_on<R: CubeRuntime>(
    p: CubeTensor<R>,
    g: CubeTensor<R>,
    buf: Option<CubeTensor<R>>,
    step: &LarsStep,
) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
    let (p, g) = (into_contiguous(p), into_contiguous(g));
    let client = p.client.clone();
    let n = p.shape().num_elements();
    let empty = |shape: Shape| crate::cube_util::empty_dense(&p, shape, DType::F32);
    // Both squared norms: partial sums of up to 1,024 cubes (added up by the update kernel),
    // or, for a small parameter, computed by the update kernel itself.
    let norms_inline = step.lars && n <= INLINE_NORMS_MAX;
    let partial = if step.lars && !norms_inline {
        let cubes = n.div_ceil(kernel::UNITS * 16).clamp(1, 1024);
        let partial = empty(Shape::new([2 * cubes]));
        kernel::square_norms_kernel::launch::<R>(
            &client,
            CubeCount::Static(cubes as u32, 1, 1),
            CubeDim::new_1d(kernel::UNITS as u32),
            p.clone().into_tensor_arg(),
            g.clone().into_tensor_arg(),
            partial.clone().into_tensor_arg(),
        );
        partial
    } else {
        p.clone() // unread
    };
    let with_momentum = step.momentum != 0.0;
    let had_buffer = buf.is_some();
    let buf = buf.map(into_contiguous).unwrap_or_else(|| p.clone());
    let p_out = empty(p.shape());
    let buf_out = empty(if with_momentum { p.shape() } else { Shape::new([1]) }); // unwritten without momentum
    if n > 0 {
        kernel::lars_update_kernel::launch::<R>(
            &client,
            CubeCount::Static(n.div_ceil(kernel::UNITS).min(UPDATE_CUBES) as u32, 1, 1),
            CubeDim::new_1d(kernel::UNITS as u32),
            p.into_tensor_arg(),
            g.into_tensor_arg(),
            buf.into_tensor_arg(),
            partial.into_tensor_arg(),
            p_out.clone().into_tensor_arg(),
            buf_out.clone().into_tensor_arg(),
            step.lr as f32,
            step.weight_decay as f32,
            step.momentum as f32,
            step.trust_coefficient as f32,
            step.eps as f32,
            step.lars,
            norms_inline,
            step.clip,
            step.lars || step.weight_decay != 0.0,
            with_momentum,
            had_buffer,
        );
    }
    (p_out, with_momentum.then_some(buf_out))
}

/// One step of parameter `p` with gradient `g` and momentum buffer `buf` (none at the first
/// step): `(p', buf')`, `buf'` none without momentum. On the CUDA backend (and, with the
/// `wgpu` feature, wgpu) for f32 tensors; `Err` with the inputs back elsewhere, for the
/// tensor-operation version.
#[allow(clippy::type_complexity)]
pub fn lars_step<B: Backend, const D: usize>(
    p: Tensor<B, D>,
    g: Tensor<B, D>,
    buf: Option<Tensor<B, D>>,
    step: &LarsStep,
) -> Result<(Tensor<B, D>, Option<Tensor<B, D>>), (Tensor<B, D>, Tensor<B, D>, Option<Tensor<B, D>>)> {
    let inputs = (p, g, buf);
    let inputs = match run_as::<B, CudaBackend, D>(inputs, step) {
        Ok(out) => return Ok(out),
        Err(inputs) => inputs,
    };
    #[cfg(feature = "wgpu")]
    let inputs = match run_as::<B, crate::WgpuBackend, D>(inputs, step) {
        Ok(out) => return Ok(out),
        Err(inputs) => inputs,
    };
    Err(inputs)
}

#[allow(clippy::type_complexity)]
fn run_as<B: Backend, T: CubeLars, const D: usize>(
    (p, g, buf): (Tensor<B, D>, Tensor<B, D>, Option<Tensor<B, D>>),
    step: &LarsStep,
) -> Result<(Tensor<B, D>, Option<Tensor<B, D>>), (Tensor<B, D>, Tensor<B, D>, Option<Tensor<B, D>>)> {
    let f32s = p.dtype() == DType::F32 && g.dtype() == DType::F32 && buf.as_ref().is_none_or(|b| b.dtype() == DType::F32);
    if !is::<B, T>() || !f32s || p.dims() != g.dims() {
        return Err((p, g, buf));
    }
    let (p, g, buf): (Tensor<T, D>, Tensor<T, D>, Option<Tensor<T, D>>) = (same_type(p), same_type(g), buf.map(same_type));
    let (p, buf) = T::lars_step(p, g, buf, step);
    Ok((same_type(p), buf.map(same_type)))
}

/// [`lars_step_on`] for a CubeCL backend, by type.
trait CubeLars: Backend {
    #[allow(clippy::type_complexity)]
    fn lars_step<const D: usize>(p: Tensor<Self, D>, g: Tensor<Self, D>, buf: Option<Tensor<Self, D>>, step: &LarsStep) -> (Tensor<Self, D>, Option<Tensor<Self, D>>);
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> CubeLars for CubeBackend<R, F, I, BT> {
    fn lars_step<const D: usize>(p: Tensor<Self, D>, g: Tensor<Self, D>, buf: Option<Tensor<Self, D>>, step: &LarsStep) -> (Tensor<Self, D>, Option<Tensor<Self, D>>) {
        let shape = p.shape();
        let prim = |t: Tensor<Self, D>| t.into_primitive().tensor();
        let (p, buf) = lars_step_on::<R>(prim(p), prim(g), buf.map(prim), step);
        let back = |t: CubeTensor<R>| Tensor::<Self, D>::from_primitive(TensorPrimitive::Float(t)).reshape(shape.clone());
        (back(p), buf.map(back))
    }
}
