//! A sum over replicas inside the autodiff graph, for synchronised batch norm.
//!
//! Forward: the element-wise sum of every replica's tensor. Backward: the adjoint of that
//! map, which is again the sum over replicas of every replica's incoming gradient (each
//! replica's loss depends on every replica's input through the shared statistics). The
//! backward sum runs inside `loss.backward()`; the replicas build identical graphs, and
//! Burn walks identical graphs in the same order, so their calls pair up.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorPrimitive};

use crate::Replica;

/// Autodiff backends that can sum a tracked tensor over replicas.
pub trait TrackedSum: AutodiffBackend {
    /// `Σ_replicas t`, with the gradient of the result flowing back to every replica's `t`.
    fn tracked_sum<const D: usize>(replica: &Replica, t: Tensor<Self, D>) -> Tensor<Self, D>;
}

fn sum_primitive<X: Backend, const D: usize>(r: &Replica, p: X::FloatTensorPrimitive) -> X::FloatTensorPrimitive {
    r.sum(Tensor::<X, D>::from_primitive(TensorPrimitive::Float(p))).into_primitive().tensor()
}

#[derive(Debug)]
struct SumBackward<const D: usize>;

impl<X: Backend, const D: usize> Backward<X, 1> for SumBackward<D> {
    type State = Replica;

    fn backward(self, ops: Ops<Replica, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let replica = ops.state.clone();
        unary::<X, _>(ops.parents, ops.node, grads, |g| sum_primitive::<X, D>(&replica, g));
    }
}

impl<X: Backend, C: CheckpointStrategy> TrackedSum for Autodiff<X, C> {
    fn tracked_sum<const D: usize>(replica: &Replica, t: Tensor<Self, D>) -> Tensor<Self, D> {
        if replica.is_single() {
            return t;
        }
        let input = t.into_primitive().tensor();
        let out = sum_primitive::<X, D>(replica, input.primitive.clone());
        let result = match SumBackward::<D>.prepare::<C>([input.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(replica.clone(), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Tensor::from_primitive(TensorPrimitive::Float(result))
    }
}
