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
use burn::tensor::{Tensor, TensorMetadata};
use burn_cubecl::kernel::matmul::{matmul, MatmulStrategy};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use crate::{dispatch, report_fallback, BinaryOp, ExplicitOps};

/// A (batched) matmul on a kernel the backend chooses explicitly.
pub trait MatmulKernels: Backend {
    fn mm(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> MatmulKernels for CubeBackend<R, F, I, BT> {
    fn mm(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let dtype = a.dtype;
        matmul::<R>(a.clone(), b.clone(), None, MatmulStrategy::Cube, dtype).unwrap_or_else(|e| {
            report_fallback(format!("matmul {:?} x {:?}", a.shape(), b.shape()), "the backend's own choice", &e);
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

/// The last two dimensions swapped (a view).
fn t<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let rank = x.shape().num_dims();
    B::float_swap_dims(x, rank - 2, rank - 1)
}

/// The matmul as one autodiff operation whose products run on `B`'s [`MatmulKernels`].
pub(crate) fn autodiff_mm<B: MatmulKernels, C: CheckpointStrategy>(a: FloatTensor<Autodiff<B, C>>, b: FloatTensor<Autodiff<B, C>>) -> FloatTensor<Autodiff<B, C>> {
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

/// `a.matmul(b)` on the explicit kernel when `B` is one of the binaries' backends
/// ([`crate::runs_explicitly`]) and the batch dimensions match (no broadcasting); Burn's
/// `matmul` otherwise.
pub fn gemm_matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    if a.dims()[..D - 2] != b.dims()[..D - 2] {
        return a.matmul(b);
    }
    dispatch(a, b, &Matmul)
}

struct Matmul;

impl<const D: usize> BinaryOp<D> for Matmul {
    fn explicit<T: ExplicitOps>(&self, a: FloatTensor<T>, b: FloatTensor<T>) -> FloatTensor<T> {
        T::gemm_mm(a, b)
    }
    fn fallback<B: Backend>(&self, a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
        a.matmul(b)
    }
}

/// `linear.forward(x)` for `[N, d_in]` inputs, its matmul through [`gemm_matmul`].
pub fn gemm_linear<B: Backend>(linear: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let y = gemm_matmul(x, linear.weight.val());
    match &linear.bias {
        Some(bias) => y + bias.val().unsqueeze(),
        None => y,
    }
}
