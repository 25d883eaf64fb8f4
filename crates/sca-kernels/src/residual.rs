//! The end of a residual block, `relu(a + b)`, as one operation.
//!
//! As tensor operations on a CubeCL backend without Burn's fusion, the sum and the ReLU are
//! three launches forward (the addition, the `≤ 0` comparison, the masked fill) and two
//! backward (comparison and fill again), each a full pass over the block's output; ResNet-50
//! has sixteen such ends, the largest `[B, 256, 56, 56]`. [`add_relu`] is one kernel
//! forward and one backward (`g` where the output is positive, else 0, handed to both
//! inputs). On Flex it is the tensor operations, which the kernels are tested against.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use crate::cube_util::{grid_for, vector_size};
use crate::layout::{empty_in, in_own_layout, into_layout};
use crate::{dispatch, BinaryOp, ExplicitOps};

/// The two passes of `relu(a + b)` on tensors of one shape and float type.
pub trait ResidualKernels: Backend {
    /// `relu(a + b)`.
    fn add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The gradient of either input: `g` where `out > 0`, else 0.
    fn relu_grad(out: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `a + b`, two gradients of one tensor summed, in `a`'s memory order (see
    /// `register_summed!`).
    fn grad_sum(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_add(a, b)
    }
}

/// burn-autodiff's tensor, named through the backend (its module is private; its fields are
/// public).
pub(crate) type AutodiffTensorOf<B> = FloatTensor<Autodiff<B>>;

/// `register_summed!(B, grads, node, grad)`: registers `grad` as a gradient of `node` (an
/// operation's parent), summed with the one already there on `B`'s
/// [`ResidualKernels::grad_sum`]. Burn's autodiff sums gradients itself, but with its
/// element-wise addition, which walks channels-last tensors in NCHW order (a gather of
/// stride `C` on every operand): 31 ms of a ResNet-50 step on an H200 (a block's input goes
/// to its first convolution and to its shortcut). Our kernel walks memory in order. (A
/// macro: the node's type is private to burn-autodiff too.)
macro_rules! register_summed {
    ($B:ty, $grads:expr, $node:expr, $grad:expr) => {{
        let (node, grad) = ($node, $grad);
        // Gradients are looked up by a tensor's node: this tensor stands for it.
        let key = $crate::residual::AutodiffTensorOf::<$B> { primitive: grad.clone(), node: node.clone(), rc: std::sync::Arc::new(node.id) };
        let sum = match $grads.remove::<$B>(&key) {
            Some(old) => <$B as $crate::residual::ResidualKernels>::grad_sum(old, grad),
            None => grad,
        };
        $grads.register::<$B>(node.id, sum);
    }};
}
pub(crate) use register_summed;

/// The passes as tensor operations, on any backend.
mod ops {
    use super::*;

    fn t<B: Backend>(x: FloatTensor<B>) -> Tensor<B, 1> {
        let n = x.shape().num_elements();
        Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(x)).reshape([n])
    }

    /// `[n]` back to `like`'s shape.
    fn shaped<B: Backend>(x: Tensor<B, 1>, like: &FloatTensor<B>) -> FloatTensor<B> {
        let x: FloatTensor<B> = x.into_primitive().tensor();
        B::float_reshape(x, like.shape())
    }

    pub(super) fn add_relu<B: Backend>(a: FloatTensor<B>, b: FloatTensor<B>) -> FloatTensor<B> {
        shaped(relu(t::<B>(a.clone()) + t::<B>(b)), &a)
    }

    pub(super) fn relu_grad<B: Backend>(out: FloatTensor<B>, g: FloatTensor<B>) -> FloatTensor<B> {
        shaped(t::<B>(g.clone()).mask_fill(t::<B>(out).lower_equal_elem(0.0), 0.0), &g)
    }
}

impl ResidualKernels for Flex {
    fn add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        ops::add_relu::<Self>(a, b)
    }
    fn relu_grad(out: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        ops::relu_grad::<Self>(out, g)
    }
}

/// The CubeCL kernels (their own module: CubeCL's `Tensor` is not Burn's), one unit per
/// vector of `N` values over a 2-D grid of cubes.
mod kernel {
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::prelude::*;

    use crate::cube_util::cube_index;

    pub(super) const UNITS: usize = 256;

    /// `out = max(a + b, 0)`, `N` values per unit.
    #[cube(launch)]
    pub(super) fn add_relu_kernel<F: Numeric, N: Size>(a: &Tensor<Vector<F, N>>, b: &Tensor<Vector<F, N>>, out: &mut Tensor<Vector<F, N>>, #[define(F)] _dtype: StorageType) {
        let i = cube_index() * UNITS + UNIT_POS_X as usize;
        if i >= out.len() {
            terminate!();
        }
        let s = a[i] + b[i];
        let zero = Vector::new(F::from_int(0));
        out[i] = select_many(s.greater_than(zero), s, zero);
    }

    /// `out = a + b`, `N` values per unit.
    #[cube(launch)]
    pub(super) fn add_kernel<F: Numeric, N: Size>(a: &Tensor<Vector<F, N>>, b: &Tensor<Vector<F, N>>, out: &mut Tensor<Vector<F, N>>, #[define(F)] _dtype: StorageType) {
        let i = cube_index() * UNITS + UNIT_POS_X as usize;
        if i >= out.len() {
            terminate!();
        }
        out[i] = a[i] + b[i];
    }

    /// `dx = g` where `out > 0`, else 0, `N` values per unit.
    #[cube(launch)]
    pub(super) fn relu_grad_kernel<F: Numeric, N: Size>(out: &Tensor<Vector<F, N>>, g: &Tensor<Vector<F, N>>, dx: &mut Tensor<Vector<F, N>>, #[define(F)] _dtype: StorageType) {
        let i = cube_index() * UNITS + UNIT_POS_X as usize;
        if i >= dx.len() {
            terminate!();
        }
        let zero = Vector::new(F::from_int(0));
        dx[i] = select_many(out[i].greater_than(zero), g[i], zero);
    }
}

/// `launch(cubes, vector, a, b, out)`: a kernel of two operands into a new tensor of their
/// shape, `vector` values per unit (the widest load that divides their number), all three
/// in `a`'s memory order (channels-first or channels-last; see [`crate::layout`]), so that
/// the kernel pairs values by their place in memory.
fn elementwise<R: CubeRuntime>(a: CubeTensor<R>, b: CubeTensor<R>, launch: impl FnOnce(CubeCount, usize, CubeTensor<R>, CubeTensor<R>, CubeTensor<R>)) -> CubeTensor<R> {
    let (a, layout) = in_own_layout(a);
    let b = into_layout(b, layout);
    let out = empty_in(layout, &a, a.shape(), a.dtype);
    let n = out.shape().num_elements();
    if n > 0 {
        let vector = vector_size(&a, n);
        launch(grid_for(n / vector, kernel::UNITS), vector, a, b, out.clone());
    }
    out
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> ResidualKernels for CubeBackend<R, F, I, BT> {
    fn add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        if a.shape() != b.shape() || a.dtype != b.dtype {
            return ops::add_relu::<Self>(a, b);
        }
        elementwise(a, b, |cubes, vector, a, b, out| {
            let dtype = a.dtype;
            kernel::add_relu_kernel::launch::<R>(&a.client.clone(), cubes, CubeDim::new_1d(kernel::UNITS as u32), vector, a.into_tensor_arg(), b.into_tensor_arg(), out.into_tensor_arg(), dtype.into());
        })
    }

    fn relu_grad(out: FloatTensor<Self>, g: FloatTensor<Self>) -> FloatTensor<Self> {
        if out.shape() != g.shape() || out.dtype != g.dtype {
            return ops::relu_grad::<Self>(out, g);
        }
        elementwise(out, g, |cubes, vector, out, g, dx| {
            let dtype = g.dtype;
            kernel::relu_grad_kernel::launch::<R>(&g.client.clone(), cubes, CubeDim::new_1d(kernel::UNITS as u32), vector, out.into_tensor_arg(), g.into_tensor_arg(), dx.into_tensor_arg(), dtype.into());
        })
    }

    fn grad_sum(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        if a.shape() != b.shape() || a.dtype != b.dtype {
            return Self::float_add(a, b);
        }
        elementwise(a, b, |cubes, vector, a, b, out| {
            let dtype = a.dtype;
            kernel::add_kernel::launch::<R>(&a.client.clone(), cubes, CubeDim::new_1d(kernel::UNITS as u32), vector, a.into_tensor_arg(), b.into_tensor_arg(), out.into_tensor_arg(), dtype.into());
        })
    }
}

/// `relu(a + b)` as one autodiff operation whose passes run on `B`'s [`ResidualKernels`].
pub(crate) fn autodiff_add_relu<B: ResidualKernels, C: CheckpointStrategy>(a: FloatTensor<Autodiff<B, C>>, b: FloatTensor<Autodiff<B, C>>) -> FloatTensor<Autodiff<B, C>> {
    #[derive(Debug)]
    struct AddReluBackward;

    impl<B: ResidualKernels> Backward<B, 2> for AddReluBackward {
        /// The output: its sign is the ReLU's mask.
        type State = FloatTensor<B>;

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node_a, node_b] = ops.parents;
            let g = B::relu_grad(ops.state, grads.consume::<B>(&ops.node));
            if let Some(node) = node_a {
                register_summed!(B, grads, node, g.clone());
            }
            if let Some(node) = node_b {
                register_summed!(B, grads, node, g);
            }
        }
    }

    let out = B::add_relu(a.primitive, b.primitive);
    match AddReluBackward.prepare::<C>([a.node, b.node]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(out.clone(), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// `relu(a + b)` for operands of one shape, as one kernel each way on the binaries'
/// backends ([`crate::runs_explicitly`]); Burn's operations otherwise.
pub fn add_relu<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    if a.dims() != b.dims() {
        return relu(a + b);
    }
    dispatch(a, b, &AddRelu)
}

struct AddRelu;

impl<const D: usize> BinaryOp<D> for AddRelu {
    fn explicit<T: ExplicitOps>(&self, a: FloatTensor<T>, b: FloatTensor<T>) -> FloatTensor<T> {
        T::fused_add_relu(a, b)
    }
    fn fallback<B: Backend>(&self, a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
        relu(a + b)
    }
}
