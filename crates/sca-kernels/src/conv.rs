//! 2-D convolution (no bias, no groups) as one autodiff operation on explicit kernels.
//!
//! On CubeCL backends the three passes call burn-cubecl's `conv_forward`,
//! `conv_data_backward` and `conv_weight_backward` with `ConvStrategy::ImplicitGemm`. Its data
//! gradient handles stride 1 only (strided ones go to a transposed convolution, autotuned,
//! whose col2im path autotunes a matmul too); [`strided_data_grad`] turns a strided data
//! gradient into a stride-1 one by spreading the output gradient with zeros, at the price of
//! s² more multiply-adds in the few strided layers. Shapes the kernels refuse (a
//! `ConvSetupError`) fall back to the direct kernel (forward) or Burn's own choice
//! (gradients), reported once.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
use burn::tensor::{FloatDType, Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::kernel::conv::{conv_data_backward, conv_forward, conv_weight_backward, ConvStrategy};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use crate::{dispatch, report_fallback, BinaryOp, ExplicitOps};

/// The three passes of a bias-free convolution on kernels the backend chooses explicitly.
/// Signatures follow Burn's `ModuleOps::conv2d*` (symmetric padding in `options`).
pub trait ConvKernels: Backend {
    fn conv_fwd(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self>;
    fn conv_dgrad(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self>;
    fn conv_wgrad(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self>;
}

fn describe(pass: &str, x: &Shape, w: &Shape, options: &ConvOptions<2>) -> String {
    format!("convolution {pass}, x {x:?} w {w:?} stride {:?} padding {:?}", options.stride, options.padding)
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> ConvKernels for CubeBackend<R, F, I, BT> {
    fn conv_fwd(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        let (xs, ws) = (x.shape(), weight.shape());
        conv_forward::<R, 2>(x.clone(), weight.clone(), None, options.clone(), ConvStrategy::ImplicitGemm).unwrap_or_else(|e| {
            report_fallback(describe("forward", &xs, &ws, &options), &e);
            conv_forward::<R, 2>(x, weight, None, options, ConvStrategy::Direct).expect("direct convolution")
        })
    }

    fn conv_dgrad(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        if options.stride != [1, 1] && options.groups == 1 {
            return strided_data_grad::<Self>(x, weight, grad, options, Self::conv_dgrad);
        }
        let (xs, ws) = (x.shape(), weight.shape());
        conv_data_backward::<R, 2>(grad.clone(), weight.clone(), xs.clone(), options.clone(), ConvStrategy::ImplicitGemm).unwrap_or_else(|e| {
            report_fallback(describe("data gradient", &xs, &ws, &options), &e);
            <Self as ModuleOps<Self>>::conv2d_x_backward(x, weight, grad, options)
        })
    }

    fn conv_wgrad(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        let (xs, ws) = (x.shape(), weight.shape());
        conv_weight_backward::<R, 2>(x.clone(), grad.clone(), ws.clone(), options.clone(), ConvStrategy::ImplicitGemm).unwrap_or_else(|e| {
            report_fallback(describe("weight gradient", &xs, &ws, &options), &e);
            <Self as ModuleOps<Self>>::conv2d_weight_backward(x, weight, grad, options)
        })
    }
}

/// The data gradient of a strided convolution as that of a stride-1 one (`stride1`).
///
/// With stride s, `x[i]` feeds `y[o]` through tap t when `o·s + t·d − p = i`. Spreading the
/// output gradient to `g[o·s] = dy[o]` (zeros between) makes that `j + t·d − p = i` with
/// `j = o·s`: the stride-1 convolution's relation, whose output has `H + 2p − d(k−1)` rows;
/// the spread gradient is cut or zero-extended to that size (its rows past `(H'−1)·s` are
/// zeros either way).
pub fn strided_data_grad<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    options: ConvOptions<2>,
    stride1: impl Fn(FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, ConvOptions<2>) -> FloatTensor<B>,
) -> FloatTensor<B> {
    let (xs, ws) = (x.shape(), weight.shape());
    let size = |i: usize| xs[2 + i] + 2 * options.padding[i] - options.dilation[i] * (ws[2 + i] - 1);
    let grad = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(grad));
    let spread = spread_with_zeros(grad, options.stride, [size(0), size(1)]);
    let options = ConvOptions::new([1, 1], options.padding, options.dilation, options.groups);
    stride1(x, weight, spread.into_primitive().tensor(), options)
}

/// `[B, C, H, W]` → `[B, C, size]` with `out[.., h·sh, w·sw] = t[.., h, w]` and zeros elsewhere.
fn spread_with_zeros<B: Backend>(t: Tensor<B, 4>, [sh, sw]: [usize; 2], size: [usize; 2]) -> Tensor<B, 4> {
    let [b, c, h, w] = t.dims();
    let dtype = FloatDType::from(t.dtype());
    let device = t.device();
    let zeros = |shape: [usize; 6]| Tensor::<B, 6>::zeros(shape, &device).cast(dtype);
    let mut t = t.reshape([b, c, h, 1, w, 1]);
    if sh > 1 {
        t = Tensor::cat(vec![t, zeros([b, c, h, sh - 1, w, 1])], 3);
    }
    if sw > 1 {
        t = Tensor::cat(vec![t, zeros([b, c, h, sh, w, sw - 1])], 5);
    }
    let t = t.reshape([b, c, h * sh, w * sw]);
    fit(fit(t, 2, size[0]), 3, size[1])
}

/// `t` cut or zero-extended (at the end) to `len` along `dim`.
fn fit<B: Backend>(t: Tensor<B, 4>, dim: usize, len: usize) -> Tensor<B, 4> {
    let have = t.dims()[dim];
    if have >= len {
        return t.narrow(dim, 0, len);
    }
    let mut shape = t.dims();
    shape[dim] = len - have;
    let zeros = Tensor::<B, 4>::zeros(shape, &t.device()).cast(FloatDType::from(t.dtype()));
    Tensor::cat(vec![t, zeros], dim)
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

/// The convolution as one autodiff operation whose passes run on `B`'s [`ConvKernels`].
pub(crate) fn autodiff_conv<B: ConvKernels, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    options: ConvOptions<2>,
) -> FloatTensor<Autodiff<B, C>> {
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

/// `conv2d(x, weight)` without bias (padding symmetric, in `options`) on the explicit
/// kernels when `B` is one of the binaries' backends ([`crate::runs_explicitly`]); Burn's
/// `conv2d` otherwise.
pub fn gemm_conv2d<B: Backend>(x: Tensor<B, 4>, weight: Tensor<B, 4>, options: ConvOptions<2>) -> Tensor<B, 4> {
    dispatch(x, weight, &Conv(options))
}

struct Conv(ConvOptions<2>);

impl BinaryOp<4> for Conv {
    fn explicit<T: ExplicitOps>(&self, x: FloatTensor<T>, weight: FloatTensor<T>) -> FloatTensor<T> {
        T::gemm_conv(x, weight, self.0.clone())
    }
    fn fallback<B: Backend>(&self, x: Tensor<B, 4>, weight: Tensor<B, 4>) -> Tensor<B, 4> {
        burn::tensor::module::conv2d(x, weight, None, self.0.clone())
    }
}
