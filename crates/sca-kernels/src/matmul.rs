//! Matmul as one autodiff operation on an explicit kernel.
//!
//! On CubeCL backends all three products (`A·B`, `dC·Bᵀ`, `Aᵀ·dC`) run on burn-cubecl's
//! `MatmulStrategy::Cube` (cubek's tiled tensor-core matmul; a plain unit matmul where the
//! hardware has no tensor cores) instead of the autotuned default, which compiles and times
//! about thirty candidates per shape key. Used for the projection heads and prototypes,
//! whose few shapes per step otherwise cost a minute of tuning each on a cold GPU.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::{Autodiff, Flex};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::kernel::matmul::{matmul, MatmulStrategy};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use crate::{is, report_fallback, same_type, CudaBackend};

/// A (batched) matmul on a kernel the backend chooses explicitly.
pub trait MatmulKernels: Backend {
    fn mm(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// A matmul a backend runs through [`MatmulKernels`]: the kernel itself on an inner backend,
/// one autodiff operation over it on `Autodiff`.
pub trait GemmMatmul: Backend {
    fn gemm_mm(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> MatmulKernels for CubeBackend<R, F, I, BT> {
    fn mm(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let dtype = a.dtype;
        matmul::<R>(a.clone(), b.clone(), None, MatmulStrategy::Cube, dtype).unwrap_or_else(|e| {
            report_fallback(format!("matmul {:?} x {:?}", a.shape(), b.shape()), &e);
            Self::float_matmul(a, b)
        })
    }
}

/// The CPU backend's own matmul: the reference the tests hold the autodiff operation to.
impl MatmulKernels for Flex {
    fn mm(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(a, b)
    }
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> GemmMatmul for CubeBackend<R, F, I, BT> {
    fn gemm_mm(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::mm(a, b)
    }
}

impl GemmMatmul for Flex {
    fn gemm_mm(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::mm(a, b)
    }
}

/// The last two dimensions swapped (a view).
fn t<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let rank = x.shape().num_dims();
    B::float_swap_dims(x, rank - 2, rank - 1)
}

impl<B: MatmulKernels, C: CheckpointStrategy> GemmMatmul for Autodiff<B, C> {
    fn gemm_mm(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct MatmulBackward;

        impl<B: MatmulKernels> Backward<B, 2> for MatmulBackward {
            type State = (NodeId, NodeId);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let [node_a, node_b] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (a_state, b_state) = ops.state;
                let a = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(a_state);
                let b = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(b_state);
                if let Some(node) = node_a {
                    grads.register::<B>(node.id, B::mm(grad.clone(), t::<B>(b)));
                }
                if let Some(node) = node_b {
                    grads.register::<B>(node.id, B::mm(t::<B>(a), grad));
                }
            }
        }

        match MatmulBackward.prepare::<C>([a.node.clone(), b.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let a_state = prep.checkpoint(&a);
                let b_state = prep.checkpoint(&b);
                prep.finish((a_state, b_state), B::mm(a.primitive, b.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::mm(a.primitive, b.primitive)),
        }
    }
}

/// `a.matmul(b)` through [`GemmMatmul`] when `B` is one of the binaries' backends
/// ([`crate::runs_explicitly`]) and the batch dimensions match (no broadcasting); Burn's
/// `matmul` otherwise.
pub fn gemm_matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    if a.dims()[..D - 2] != b.dims()[..D - 2] {
        return a.matmul(b);
    }
    run_as::<B, Autodiff<CudaBackend>, D>(a, b)
        .or_else(|(a, b)| run_as::<B, CudaBackend, D>(a, b))
        .or_else(|(a, b)| run_as::<B, Autodiff<Flex>, D>(a, b))
        .or_else(|(a, b)| run_as::<B, Flex, D>(a, b))
        .unwrap_or_else(|(a, b)| a.matmul(b))
}

/// `linear.forward(x)` for `[N, d_in]` inputs, its matmul through [`gemm_matmul`].
pub fn gemm_linear<B: Backend>(linear: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let y = gemm_matmul(x, linear.weight.val());
    match &linear.bias {
        Some(bias) => y + bias.val().unsqueeze(),
        None => y,
    }
}

/// Runs the matmul as backend `T` if `B` is `T`; hands the inputs back otherwise.
#[allow(clippy::type_complexity)]
fn run_as<B: Backend, T: GemmMatmul, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    if !is::<B, T>() {
        return Err((a, b));
    }
    let (a, b) = (same_type::<_, Tensor<T, D>>(a), same_type::<_, Tensor<T, D>>(b));
    let y = T::gemm_mm(a.into_primitive().tensor(), b.into_primitive().tensor());
    Ok(same_type(Tensor::<T, D>::from_primitive(TensorPrimitive::Float(y))))
}
