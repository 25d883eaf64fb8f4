//! Convolutions on explicitly chosen kernels: CubeCL's implicit GEMM on the GPU, no autotune.
//!
//! Burn's `conv2d` on the CUDA backend autotunes every convolution shape of every pass
//! (forward, data gradient, weight gradient): each tuning key compiles and times up to seven
//! candidate kernels, which kept a ResNet-50 training step from finishing its first backward
//! pass within minutes (docs/BENCHMARKS.md, section GPU). [`gemm_conv2d`] runs the same
//! convolution as one autodiff operation whose three passes call burn-cubecl's implicit-GEMM
//! kernels directly (`ConvStrategy::ImplicitGemm`: tensor cores, TF32 for f32 inputs), so a
//! shape costs one compilation per pass. Shapes those kernels refuse (a `ConvSetupError`)
//! fall back to the direct kernel (forward) or to Burn's own choice (gradients), once
//! reported on stderr.
//!
//! On other backends (the CPU's Flex) the same autodiff operation runs on the backend's own
//! convolution kernels, so the operation's gradient plumbing is tested without a GPU.
//!
//! The model code is generic over `B: Backend`; rather than carry a new trait bound through
//! every crate, [`gemm_conv2d`] recognises the concrete backends it knows by type and falls
//! back to Burn's `conv2d` for any other.

use std::any::{Any, TypeId};
use std::collections::BTreeSet;
use std::sync::Mutex;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::kernel::conv::{conv_data_backward, conv_forward, conv_weight_backward, ConvStrategy};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

/// The CUDA backend the binaries run on: CubeCL without Burn's operation fusion, so that
/// convolutions can be routed to [`gemm_conv2d`]'s kernels by type.
pub type CudaBackend = CubeBackend<CudaRuntime, f32, i32, u8>;

/// The three passes of a bias-free convolution, on kernels the backend chooses explicitly.
/// Signatures follow Burn's `ModuleOps::conv2d*` (symmetric padding in `options`).
pub trait ConvKernels: Backend {
    fn conv_fwd(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self>;
    fn conv_dgrad(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self>;
    fn conv_wgrad(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self>;
}

/// A convolution a backend can run through [`ConvKernels`]: the kernels themselves on an
/// inner backend, one autodiff operation over them on `Autodiff`.
pub trait GemmConv: Backend {
    fn gemm_conv(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self>;
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> ConvKernels for CubeBackend<R, F, I, BT> {
    fn conv_fwd(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        let (xs, ws) = (x.shape(), weight.shape());
        conv_forward::<R, 2>(x.clone(), weight.clone(), None, options.clone(), ConvStrategy::ImplicitGemm).unwrap_or_else(|e| {
            report_fallback("forward", &xs, &ws, &options, &e);
            conv_forward::<R, 2>(x, weight, None, options, ConvStrategy::Direct).expect("direct convolution")
        })
    }

    fn conv_dgrad(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        let (xs, ws) = (x.shape(), weight.shape());
        conv_data_backward::<R, 2>(grad.clone(), weight.clone(), xs.clone(), options.clone(), ConvStrategy::ImplicitGemm).unwrap_or_else(|e| {
            report_fallback("data gradient", &xs, &ws, &options, &e);
            <Self as ModuleOps<Self>>::conv2d_x_backward(x, weight, grad, options)
        })
    }

    fn conv_wgrad(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        let (xs, ws) = (x.shape(), weight.shape());
        conv_weight_backward::<R, 2>(x.clone(), grad.clone(), ws.clone(), options.clone(), ConvStrategy::ImplicitGemm).unwrap_or_else(|e| {
            report_fallback("weight gradient", &xs, &ws, &options, &e);
            <Self as ModuleOps<Self>>::conv2d_weight_backward(x, weight, grad, options)
        })
    }
}

/// Says once per (pass, shape) that the implicit-GEMM kernels refused a convolution.
fn report_fallback(pass: &str, x: &impl std::fmt::Debug, w: &impl std::fmt::Debug, options: &ConvOptions<2>, error: &impl std::fmt::Debug) {
    static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let key = format!("{pass} x {x:?} w {w:?} stride {:?} padding {:?}", options.stride, options.padding);
    if SEEN.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone()) {
        eprintln!("note: implicit-GEMM convolution refused ({error:?}); {key} runs on the fallback kernel");
    }
}

/// The CPU backend's own kernels: the reference the tests hold the autodiff operation to.
impl ConvKernels for Flex {
    fn conv_fwd(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv2d(x, weight, None, options)
    }
    fn conv_dgrad(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv2d_x_backward(x, weight, grad, options)
    }
    fn conv_wgrad(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::conv2d_weight_backward(x, weight, grad, options)
    }
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> GemmConv for CubeBackend<R, F, I, BT> {
    fn gemm_conv(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        Self::conv_fwd(x, weight, options)
    }
}

impl GemmConv for Flex {
    fn gemm_conv(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        Self::conv_fwd(x, weight, options)
    }
}

impl<B: ConvKernels, C: CheckpointStrategy> GemmConv for Autodiff<B, C> {
    fn gemm_conv(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct ConvBackward;

        impl<B: ConvKernels> Backward<B, 2> for ConvBackward {
            type State = (NodeId, NodeId, ConvOptions<2>);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let [node_x, node_weight] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, weight_state, options) = ops.state;
                let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
                let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, B::conv_dgrad(x.clone(), weight.clone(), grad.clone(), options.clone()));
                }
                if let Some(node) = node_weight {
                    grads.register::<B>(node.id, B::conv_wgrad(x, weight, grad, options));
                }
            }
        }

        match ConvBackward.prepare::<C>([x.node.clone(), weight.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                prep.finish((x_state, weight_state, options.clone()), B::conv_fwd(x.primitive, weight.primitive, options))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv_fwd(x.primitive, weight.primitive, options)),
        }
    }
}

/// `conv2d(x, weight)` without bias (padding symmetric, in `options`) through [`GemmConv`]
/// when `B` is one of the backends the binaries use (CUDA and Flex, with or without
/// autodiff); Burn's `conv2d` otherwise.
pub fn gemm_conv2d<B: Backend>(x: Tensor<B, 4>, weight: Tensor<B, 4>, options: ConvOptions<2>) -> Tensor<B, 4> {
    run_as::<B, Autodiff<CudaBackend>>(x, weight, &options)
        .or_else(|(x, w)| run_as::<B, CudaBackend>(x, w, &options))
        .or_else(|(x, w)| run_as::<B, Autodiff<Flex>>(x, w, &options))
        .or_else(|(x, w)| run_as::<B, Flex>(x, w, &options))
        .unwrap_or_else(|(x, w)| burn::tensor::module::conv2d(x, w, None, options))
}

/// Whether [`gemm_conv2d`] on `B` runs through [`GemmConv`] (rather than Burn's `conv2d`).
pub fn runs_explicitly<B: Backend>() -> bool {
    let b = TypeId::of::<B>();
    [TypeId::of::<Autodiff<CudaBackend>>(), TypeId::of::<CudaBackend>(), TypeId::of::<Autodiff<Flex>>(), TypeId::of::<Flex>()].contains(&b)
}

/// Runs the convolution as backend `T` if `B` is `T`; hands the inputs back otherwise.
#[allow(clippy::type_complexity)]
fn run_as<B: Backend, T: GemmConv>(x: Tensor<B, 4>, weight: Tensor<B, 4>, options: &ConvOptions<2>) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>)> {
    if TypeId::of::<B>() != TypeId::of::<T>() {
        return Err((x, weight));
    }
    let (x, weight) = (same_type::<_, Tensor<T, 4>>(x), same_type::<_, Tensor<T, 4>>(weight));
    let y = T::gemm_conv(x.into_primitive().tensor(), weight.into_primitive().tensor(), options.clone());
    Ok(same_type(Tensor::<T, 4>::from_primitive(TensorPrimitive::Float(y))))
}

/// The identity between two names of one type (checked by `TypeId` before the call).
fn same_type<A: 'static, T: 'static>(a: A) -> T {
    *(Box::new(a) as Box<dyn Any>).downcast::<T>().expect("types checked equal")
}
