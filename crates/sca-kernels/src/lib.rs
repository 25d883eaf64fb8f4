//! Convolution and matmul on explicitly chosen GPU kernels, as autodiff operations.
//!
//! Burn's CUDA backend autotunes every convolution and matmul shape of every pass: each
//! tuning key compiles (NVRTC) and times every candidate kernel, up to seven per convolution
//! pass and about thirty per matmul. On an H200 that kept a ResNet-50 training step from
//! finishing within minutes, and a kernel profile of the first forward pass showed 54
//! matmul candidates compiled in it (63 s of 77 s; docs/BENCHMARKS.md, section GPU).
//!
//! - [`conv`]: [`gemm_conv2d`], forward, data and weight gradients on cubek's implicit-GEMM
//!   kernels (tensor cores; TF32 for f32 inputs), each pass on the kernel the current
//!   [`plan`] names for its shape.
//! - [`plan`]: [`plan::ConvPlan`], which of cubek's eighteen convolution kernels (or
//!   [`as_matmul`]: im2col and cubek's tiled matmul) each pass of each shape runs, as
//!   `sca bench convs` measures and writes it.
//! - [`matmul`]: [`gemm_matmul`] and [`gemm_linear`], matmul and its two gradients on
//!   cubek's tiled tensor-core matmul.
//! - [`batch_norm`]: [`batch_norm_train`], training-mode batch norm (and a ReLU after it)
//!   as one autodiff operation of four kernel launches on the GPU; [`batch_norm_eval`], the
//!   inference-mode one as one kernel.
//! - [`residual`]: [`add_relu`], a residual block's `relu(a + b)` as one kernel each way.
//! - [`lars`]: one LARC + momentum-SGD parameter step in two launches (one for small
//!   parameters).
//! - [`layout`]: NCHW ↔ NHWC copies by tiles, for cubek's channels-last convolutions.
//! - [`topk`]: [`top_k`], each row's k largest entries selected on the GPU (Burn's CubeCL
//!   backends sort on the host).
//!
//! Each runs on the CUDA backend with one kernel per shape and pass, compiled once and kept
//! in CubeCL's compilation cache. On the CPU's Flex backend the same autodiff operations run
//! on the backend's own kernels, so their gradient plumbing is tested without a GPU.
//!
//! The model code is generic over `B: Backend`; rather than carry a new trait bound through
//! every crate, the entry points recognise the concrete backends the binaries use by type
//! ([`runs_explicitly`]) and fall back to Burn's own operation for any other.

use std::any::{Any, TypeId};
use std::sync::Mutex;

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{Tensor, TensorPrimitive};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use conv::ConvKernels;
use matmul::MatmulKernels;
use residual::ResidualKernels;

pub mod batch_norm;
pub mod im2col;
pub mod conv;
mod cube_util;
pub mod matmul;
pub mod as_matmul;
pub mod lars;
pub mod layout;
pub mod plan;
pub mod residual;
pub mod topk;

pub use batch_norm::{batch_norm_eval, batch_norm_train};
pub use conv::gemm_conv2d;
pub use matmul::{gemm_linear, gemm_matmul};
pub use residual::add_relu;
pub use topk::top_k;

/// `values` (row-major) as a dense tensor of `shape` on `device`, uploaded as one flat
/// buffer. Created with its shape, a tensor gets CubeCL's "optimized" layout, which on CUDA
/// pads every row: a batch of 224-pixel images keeps rows of 256 floats for 224 (14 % more
/// memory), is copied with a two-dimensional pitched copy from pageable memory, and reaches
/// the first operation as a non-contiguous tensor. Flat, it is one plain copy, and the
/// reshape costs nothing.
pub fn upload<B: Backend, const D: usize>(values: Vec<f32>, shape: [usize; D], device: &B::Device) -> Tensor<B, D> {
    let n = values.len();
    assert_eq!(n, shape.iter().product::<usize>(), "upload: {n} values for shape {shape:?}");
    Tensor::<B, 1>::from_data(burn::tensor::TensorData::new(values, [n]), device).reshape(shape)
}

/// The CUDA backend the binaries run on: CubeCL without Burn's operation fusion, so that
/// convolutions and matmuls reach this crate's kernels by type.
pub type CudaBackend = CubeBackend<CudaRuntime, f32, i32, u8>;

/// CubeCL on wgpu (feature `wgpu`, for tests over Mesa's software Vulkan): generic code
/// reaches this crate's CubeCL paths on it as on [`CudaBackend`] (the convolutions and
/// matmuls of [`dispatch`], the GPU selection of [`top_k`]).
#[cfg(feature = "wgpu")]
pub type WgpuBackend = CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>;

/// This crate's operations on one concrete backend: the kernels themselves on CubeCL and
/// Flex, one autodiff operation over them on `Autodiff`.
pub trait ExplicitOps: Backend {
    fn gemm_conv(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self>;
    fn gemm_mm(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
    fn fused_add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> ExplicitOps for CubeBackend<R, F, I, BT> {
    fn gemm_conv(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        Self::conv_fwd(x, weight, options)
    }
    fn gemm_mm(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::mm(a, b)
    }
    fn fused_add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as ResidualKernels>::add_relu(a, b)
    }
}

impl ExplicitOps for Flex {
    fn gemm_conv(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        Self::conv_fwd(x, weight, options)
    }
    fn gemm_mm(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::mm(a, b)
    }
    fn fused_add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as ResidualKernels>::add_relu(a, b)
    }
}

impl<B: ConvKernels + MatmulKernels + ResidualKernels, C: CheckpointStrategy> ExplicitOps for Autodiff<B, C> {
    fn gemm_conv(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        conv::autodiff_conv::<B, C>(x, weight, options)
    }
    fn gemm_mm(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        matmul::autodiff_mm::<B, C>(a, b)
    }
    fn fused_add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        residual::autodiff_add_relu::<B, C>(a, b)
    }
}

/// An operation of two float tensors, as [`dispatch`] runs it: on [`ExplicitOps`], or
/// Burn's own way on any other backend.
trait BinaryOp<const D: usize> {
    fn explicit<T: ExplicitOps>(&self, a: FloatTensor<T>, b: FloatTensor<T>) -> FloatTensor<T>;
    fn fallback<B: Backend>(&self, a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D>;
}

/// Runs `op` as the concrete backend `B` is, when that is one of the binaries' backends (the
/// same as [`runs_explicitly`]: four, six with the `wgpu` feature); `op`'s fallback otherwise.
fn dispatch<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, op: &impl BinaryOp<D>) -> Tensor<B, D> {
    run_as::<B, Autodiff<CudaBackend>, D>(a, b, op)
        .or_else(|(a, b)| run_as::<B, CudaBackend, D>(a, b, op))
        .or_else(|(a, b)| run_as_wgpu::<B, D>(a, b, op))
        .or_else(|(a, b)| run_as::<B, Autodiff<Flex>, D>(a, b, op))
        .or_else(|(a, b)| run_as::<B, Flex, D>(a, b, op))
        .unwrap_or_else(|(a, b)| op.fallback(a, b))
}

/// With the `wgpu` feature, the tests' CubeCL backend runs the CUDA backend's path.
#[cfg(feature = "wgpu")]
#[allow(clippy::type_complexity)]
fn run_as_wgpu<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, op: &impl BinaryOp<D>) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    run_as::<B, Autodiff<WgpuBackend>, D>(a, b, op).or_else(|(a, b)| run_as::<B, WgpuBackend, D>(a, b, op))
}

#[cfg(not(feature = "wgpu"))]
#[allow(clippy::type_complexity)]
fn run_as_wgpu<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, _: &impl BinaryOp<D>) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    Err((a, b))
}

/// Runs `op` as backend `T` if `B` is `T`; hands the inputs back otherwise.
#[allow(clippy::type_complexity)]
fn run_as<B: Backend, T: ExplicitOps, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, op: &impl BinaryOp<D>) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    if !is::<B, T>() {
        return Err((a, b));
    }
    let (a, b) = (same_type::<_, Tensor<T, D>>(a), same_type::<_, Tensor<T, D>>(b));
    let y = op.explicit::<T>(a.into_primitive().tensor(), b.into_primitive().tensor());
    Ok(same_type(Tensor::<T, D>::from_primitive(TensorPrimitive::Float(y))))
}

/// Whether the entry points of this crate run on `B` through the explicit kernels (rather
/// than Burn's own operations).
pub fn runs_explicitly<B: Backend>() -> bool {
    let b = TypeId::of::<B>();
    #[cfg(feature = "wgpu")]
    if [TypeId::of::<Autodiff<WgpuBackend>>(), TypeId::of::<WgpuBackend>()].contains(&b) {
        return true;
    }
    [TypeId::of::<Autodiff<CudaBackend>>(), TypeId::of::<CudaBackend>(), TypeId::of::<Autodiff<Flex>>(), TypeId::of::<Flex>()].contains(&b)
}

/// Whether `B` is the CUDA backend (with or without autodiff).
pub fn on_cuda<B: Backend>() -> bool {
    is::<B, CudaBackend>() || is::<B, Autodiff<CudaBackend>>()
}

/// The identity between two names of one type (callers compare `TypeId`s first).
fn same_type<A: 'static, T: 'static>(a: A) -> T {
    *(Box::new(a) as Box<dyn Any>).downcast::<T>().expect("types checked equal")
}

fn is<B: 'static, T: 'static>() -> bool {
    TypeId::of::<B>() == TypeId::of::<T>()
}

/// For tests on a CubeCL runtime without a GPU (wgpu over Mesa's lavapipe): `B`'s default
/// device when a tiny sum runs on it; `None`, said on stderr, without one, unless
/// `SCA_REQUIRE_VULKAN` is set (CI sets it after installing lavapipe), when it panics.
pub fn cubecl_test_device<B: Backend>() -> Option<burn::tensor::Device<B>> {
    use burn::tensor::ElementConversion;
    let device = Default::default();
    let sum = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Tensor::<B, 1>::from_floats([1.0, 2.0], &device).sum().into_scalar().elem::<f32>()));
    match (sum.is_ok_and(|v| v == 3.0), std::env::var_os("SCA_REQUIRE_VULKAN")) {
        (true, _) => Some(device),
        (false, Some(_)) => panic!("no working Vulkan device (SCA_REQUIRE_VULKAN is set): install mesa-vulkan-drivers"),
        (false, None) => {
            eprintln!("skipped: no Vulkan device for wgpu (install mesa-vulkan-drivers for lavapipe)");
            None
        }
    }
}

/// What explicit kernels refused so far and what ran instead, in order of first refusal.
static FALLBACKS: Mutex<Vec<Fallback>> = Mutex::new(Vec::new());

/// An explicit kernel's refusal: `what` (the operation, its shape and the kernel) and the
/// kernel that ran `instead`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fallback {
    pub what: String,
    pub instead: String,
}

/// Every distinct refusal so far in this process (`sca bench gpu` lists them with its
/// figures: a fallback is slower, or tuned on a cold cache).
pub fn fallbacks() -> Vec<Fallback> {
    FALLBACKS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Says once per distinct `what` that an explicit kernel refused it and what runs instead.
fn report_fallback(what: String, instead: &str, error: &impl std::fmt::Debug) {
    let mut seen = FALLBACKS.lock().unwrap_or_else(|p| p.into_inner());
    if !seen.iter().any(|f| f.what == what) {
        eprintln!("note: {what}: refused ({}); runs on {instead}", format!("{error:?}").trim());
        seen.push(Fallback { what, instead: instead.to_string() });
    }
}
