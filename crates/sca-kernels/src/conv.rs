//! 2-D convolution (no bias, no groups) as one autodiff operation on explicit kernels.
//!
//! On CubeCL backends each pass launches the cubek implicit-GEMM kernel the current
//! [`ConvPlan`](crate::plan::ConvPlan) names for its shape ([`forward_on`], [`data_on`],
//! [`weight_on`]; by default what burn-cubecl's `ConvStrategy::ImplicitGemm` pins). cubek's
//! data gradient handles stride 1 only (burn-cubecl sends strided ones to a transposed
//! convolution, autotuned, whose col2im path autotunes a matmul too); [`strided_data_grad`]
//! turns a strided data gradient into a stride-1 one by spreading the output gradient with
//! zeros, or, for undilated convolutions (ResNet's), as one stride-1 data gradient per
//! phase of the input positions, interleaved (no more multiply-adds than forward). A kernel that
//! refuses a shape (a `ConvSetupError`) gives way to the default kernel, that to the
//! `matmul` kernel, and that to the direct kernel (forward) or Burn's own choice
//! (gradients), reported once.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
use burn::tensor::{DType, FloatDType, Shape, Slice, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::kernel::conv::{conv_forward, ConvStrategy};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::{permute_nchw_to_nhwc_shape, permute_nhwc_to_nchw};
use burn_cubecl::cubecl::prelude::TensorBinding;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubek::convolution::components::ConvSetupError;
use cubek::convolution::{launch_ref, ConvolutionArgs, ConvolutionInputs, Strategy};
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems, MatmulSetupError};
use cubek::std::InputBinding;

use crate::plan::{planned_kernel, ConvKernel, ConvShape, Pass};
use crate::residual::{register_summed, ResidualKernels};
use crate::as_matmul;
use crate::layout::{channels_last, pad_channels_last, to_channels_first, to_channels_last};
use crate::{dispatch, report_fallback, BinaryOp, ExplicitOps};

/// The three passes of a bias-free convolution on kernels the backend chooses explicitly.
/// Signatures follow Burn's `ModuleOps::conv2d*` (symmetric padding in `options`).
pub trait ConvKernels: Backend {
    fn conv_fwd(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self>;
    fn conv_dgrad(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self>;
    fn conv_wgrad(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self>;

    /// The output gradient as the backward passes of this convolution best take it, when
    /// both run (a layout both can read without a copy of their own).
    fn backward_grad(_x: &FloatTensor<Self>, _weight: &FloatTensor<Self>, grad: FloatTensor<Self>, _options: &ConvOptions<2>) -> FloatTensor<Self> {
        grad
    }
}

/// The output's `[H', W']` for an `[H, W]` input and a `[kh, kw]` kernel.
pub fn output_size([h, w]: [usize; 2], kernel: [usize; 2], o: &ConvOptions<2>) -> [usize; 2] {
    let size = |i: usize, n: usize| (n + 2 * o.padding[i] - o.dilation[i] * (kernel[i] - 1) - 1) / o.stride[i] + 1;
    [size(0, h), size(1, w)]
}

/// The plan's key for a convolution of `x` by `weight` (NCHW / OIHW shapes) in this
/// process's activation layout ([`crate::layout::channels_last`]).
pub fn conv_shape(x: &Shape, weight: &Shape, options: &ConvOptions<2>, dtype: DType) -> ConvShape {
    ConvShape {
        input: [x[1], x[2], x[3]],
        weight: [weight[0], weight[1], weight[2], weight[3]],
        stride: options.stride,
        padding: options.padding,
        dilation: options.dilation,
        dtype: dtype_name(dtype),
        channels_last: crate::layout::channels_last(),
    }
}

fn dtype_name(dtype: DType) -> String {
    match dtype {
        DType::F32 => "f32".into(),
        DType::BF16 => "bf16".into(),
        DType::F16 => "f16".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// `launch` on the kernel the plan names for `pass` of `shape`; where it refuses, on the
/// default kernel, then on `matmul` (im2col and the explicit matmul: it takes every
/// ungrouped convolution and needs no tuning, where the backend's own gradient kernels are
/// autotuned: minutes on a cold CUDA cache); `None` (reported once) when all refuse.
fn on_planned<T>(pass: Pass, shape: &ConvShape, launch: impl Fn(ConvKernel) -> Result<T, ConvSetupError>) -> Option<T> {
    let planned = planned_kernel(pass, shape);
    let mut chain = vec![planned];
    chain.extend([ConvKernel::DEFAULT, ConvKernel::Matmul].into_iter().filter(|&k| k != planned));
    for (i, &kernel) in chain.iter().enumerate() {
        match launch(kernel) {
            Ok(y) => return Some(y),
            Err(e) => {
                let instead = chain.get(i + 1).map_or_else(|| "the backend's own kernel".to_string(), ToString::to_string);
                report_fallback(format!("convolution {pass} pass of {shape} on {kernel}"), &instead, &e);
            }
        }
    }
    None
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> ConvKernels for CubeBackend<R, F, I, BT> {
    fn conv_fwd(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        let shape = conv_shape(&x.shape(), &weight.shape(), &options, x.dtype);
        on_planned(Pass::Forward, &shape, |k| forward_on(k, x.clone(), weight.clone(), &options))
            .unwrap_or_else(|| conv_forward::<R, 2>(x, weight, None, options, ConvStrategy::Direct).expect("direct convolution"))
    }

    fn conv_dgrad(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        // Looked up under the layer's own shape (strided or not), as `sca bench convs` times it.
        let shape = conv_shape(&x.shape(), &weight.shape(), &options, x.dtype);
        let stride1 = |x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, options: ConvOptions<2>| {
            on_planned(Pass::Data, &shape, |k| data_on(k, grad.clone(), weight.clone(), x.shape(), &options))
                .unwrap_or_else(|| <Self as ModuleOps<Self>>::conv2d_x_backward(x, weight, grad, options))
        };
        if options.stride != [1, 1] && options.groups == 1 {
            let stride1 = |x, weight, grad, options| Ok::<_, std::convert::Infallible>(stride1(x, weight, grad, options));
            let Ok(dx) = strided_data_grad::<Self, _>(x, weight, grad, options, stride1);
            return dx;
        }
        stride1(x, weight, grad, options)
    }

    fn conv_wgrad(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        let shape = conv_shape(&x.shape(), &weight.shape(), &options, x.dtype);
        on_planned(Pass::Weight, &shape, |k| weight_on(k, x.clone(), grad.clone(), weight.shape(), &options))
            .unwrap_or_else(|| <Self as ModuleOps<Self>>::conv2d_weight_backward(x, weight, grad, options))
    }

    /// When both gradients of a stride-1 convolution run on cubek's kernels, both read the
    /// output gradient channels-last: one tiled copy, handed to both as an NCHW view of
    /// NHWC memory (which [`to_channels_last`] passes through), instead of one copy each.
    fn backward_grad(x: &FloatTensor<Self>, weight: &FloatTensor<Self>, grad: FloatTensor<Self>, options: &ConvOptions<2>) -> FloatTensor<Self> {
        let shape = conv_shape(&x.shape(), &weight.shape(), options, x.dtype);
        let on_cubek = |pass| matches!(planned_kernel(pass, &shape), ConvKernel::Gemm { .. });
        if options.stride == [1, 1] && on_cubek(Pass::Data) && on_cubek(Pass::Weight) {
            permute_nhwc_to_nchw(to_channels_last(grad))
        } else {
            grad
        }
    }
}

/// cubek's convolutions take channels-last operands: NCHW tensors are handed over as
/// contiguous NHWC tensors ([`to_channels_last`]: a tiled copy, or a view where the memory
/// is laid out so already), and the NHWC result comes back as a contiguous NCHW tensor
/// ([`to_channels_first`]), so that the element-wise kernels after it read whole vectors;
/// with [`crate::layout::set_channels_last`] as an NCHW view of the NHWC result, which the
/// batch-norm and residual kernels after it read and keep in that order.
fn binding<R: CubeRuntime>(t: CubeTensor<R>) -> InputBinding<R> {
    let t = to_channels_last(t);
    let dtype = t.dtype;
    InputBinding::new(t.binding(), dtype.into())
}

fn elems(lhs: DType, rhs: DType, out: DType) -> MatmulElems {
    MatmulElems::from_globals(&MatmulGlobalElems { lhs: lhs.into(), rhs: rhs.into(), out: out.into() })
}

/// The backend whose explicit matmul the `matmul` kernel runs on (the element types only
/// set defaults; the tensors keep their own).
type Matmuls<R> = CubeBackend<R, f32, i32, u8>;

/// The device's streaming multiprocessors (64 where the runtime does not say).
fn sms<R: CubeRuntime>(t: &CubeTensor<R>) -> usize {
    t.client.properties().hardware.num_streaming_multiprocessors.unwrap_or(64) as usize
}

/// A refusal in cubek's terms, for the kernels this crate adds.
fn refusal(why: impl std::fmt::Display + 'static) -> ConvSetupError {
    ConvSetupError::Matmul(MatmulSetupError::InvalidConfig(Box::new(why)))
}

fn launch<R: CubeRuntime>(kernel: ConvKernel, client: &burn_cubecl::cubecl::client::ComputeClient<R>, inputs: ConvolutionInputs<R>, options: &ConvOptions<2>, dtypes: MatmulElems) -> Result<(), ConvSetupError> {
    if options.groups != 1 {
        return Err(ConvSetupError::Groups(options.groups));
    }
    let ConvKernel::Gemm { algorithm, tile } = kernel else {
        return Err(refusal(format!("{kernel} is not one of cubek's kernels")));
    };
    let strategy = Strategy::Inferred { algorithm, tile_kind: tile };
    let args = ConvolutionArgs { stride: options.stride, padding: options.padding, dilation: options.dilation };
    launch_ref::<R, 2>(&strategy, client, inputs, args, dtypes)
}

/// Input channels for cubek's kernels: `c` rounded up to a multiple of 4, so that its
/// loads along the channels of channels-last operands take 4 values (16 bytes of `f32`, 8
/// of `bf16`/`f16`). cubek loads as wide as the channel count allows: the stem's 3 channels
/// took one value per load (as its weight's), so the stem's forward and weight-gradient
/// passes get a zero fourth channel (a third more multiply-adds on the stem; 8 channels would
/// fill 16-byte half loads at near three times them). `sca bench convs` times the passes
/// with it.
pub fn load_channels(c: usize) -> usize {
    c.next_multiple_of(4)
}

/// The forward pass on `kernel`: `[N, C, H, W]` × `[O, C, kh, kw]` → `[N, O, H', W']`.
/// cubek's kernels get the channels padded to [`load_channels`].
pub fn forward_on<R: CubeRuntime>(kernel: ConvKernel, x: CubeTensor<R>, weight: CubeTensor<R>, options: &ConvOptions<2>) -> Result<CubeTensor<R>, ConvSetupError> {
    if kernel == ConvKernel::Matmul {
        return as_matmul::forward::<Matmuls<R>>(x, weight, options).map_err(refusal);
    }
    let padded = load_channels(x.shape()[1]);
    if padded != x.shape()[1] {
        return forward_padded_on(kernel, x, weight, options, padded);
    }
    let (xs, ws) = (x.shape(), weight.shape());
    let [oh, ow] = output_size([xs[2], xs[3]], [ws[2], ws[3]], options);
    let dtypes = elems(x.dtype, weight.dtype, x.dtype);
    launch_nchw(kernel, &x.clone(), Shape::new([xs[0], ws[0], oh, ow]), options, dtypes, |out| ConvolutionInputs::Forward {
        input: binding(x),
        weight: binding(weight),
        bias: None,
        out,
    })
}

/// [`forward_on`] with `x` and the weight given zero channels up to `channels` (the same
/// result: the added channels multiply zeros).
pub fn forward_padded_on<R: CubeRuntime>(kernel: ConvKernel, x: CubeTensor<R>, weight: CubeTensor<R>, options: &ConvOptions<2>, channels: usize) -> Result<CubeTensor<R>, ConvSetupError> {
    forward_on(kernel, pad_channels_last(x, channels), pad_channels_last(weight, channels), options)
}

/// The data gradient on `kernel` (stride 1 only: see [`strided_data_grad`]): `dy` and the
/// weight → `dx` of shape `x_shape` (NCHW).
pub fn data_on<R: CubeRuntime>(kernel: ConvKernel, grad: CubeTensor<R>, weight: CubeTensor<R>, x_shape: Shape, options: &ConvOptions<2>) -> Result<CubeTensor<R>, ConvSetupError> {
    if options.stride != [1, 1] {
        return Err(refusal("strided data gradient (burn-cubecl refuses it; see strided_data_grad)"));
    }
    if kernel == ConvKernel::Matmul {
        return as_matmul::data_grad::<Matmuls<R>>(grad, weight, options).map_err(refusal);
    }
    let dtypes = elems(grad.dtype, weight.dtype, grad.dtype);
    launch_nchw(kernel, &grad.clone(), x_shape, options, dtypes, |in_grad| ConvolutionInputs::BackwardData {
        out_grad: binding(grad),
        weights: binding(weight),
        in_grad,
    })
}

/// The weight gradient on `kernel`: `x` and `dy` → `dw` of shape `weight_shape` (OIHW).
/// cubek's kernels get `x`'s channels padded to [`load_channels`].
pub fn weight_on<R: CubeRuntime>(kernel: ConvKernel, x: CubeTensor<R>, grad: CubeTensor<R>, weight_shape: Shape, options: &ConvOptions<2>) -> Result<CubeTensor<R>, ConvSetupError> {
    if kernel == ConvKernel::Matmul {
        let sms = sms(&x);
        return as_matmul::weight_grad_for::<Matmuls<R>>(x, grad, &weight_shape, options, sms).map_err(refusal);
    }
    let padded = load_channels(x.shape()[1]);
    if padded != x.shape()[1] {
        return weight_padded_on(kernel, x, grad, weight_shape, options, padded);
    }
    let dtypes = elems(x.dtype, grad.dtype, grad.dtype);
    launch_nchw(kernel, &grad.clone(), weight_shape, options, dtypes, |weight_grad| ConvolutionInputs::BackwardWeight {
        input: binding(x),
        out_grad: binding(grad),
        weight_grad,
    })
}

/// [`weight_on`] with `x` given zero channels up to `channels`: the gradient of the padded
/// weight, whose first `C` input channels are the weight's (a contiguous OIHW copy of them).
pub fn weight_padded_on<R: CubeRuntime>(kernel: ConvKernel, x: CubeTensor<R>, grad: CubeTensor<R>, weight_shape: Shape, options: &ConvOptions<2>, channels: usize) -> Result<CubeTensor<R>, ConvSetupError> {
    let [o, c, kh, kw] = weight_shape.dims::<4>();
    let dw = weight_on(kernel, pad_channels_last(x, channels), grad, Shape::new([o, channels, kh, kw]), options)?;
    let dw = Tensor::<Matmuls<R>, 4>::from_primitive(TensorPrimitive::Float(dw)).slice([0..o, 0..c, 0..kh, 0..kw]);
    Ok(into_contiguous(dw.into_primitive().tensor()))
}

/// Launches `kernel` on the inputs `inputs` builds around the output's binding: a new
/// channels-last tensor for the NCHW shape `out_shape`, with `like`'s type and device,
/// returned as a contiguous NCHW tensor (as an NCHW view of it with channels-last on).
fn launch_nchw<R: CubeRuntime>(
    kernel: ConvKernel,
    like: &CubeTensor<R>,
    out_shape: Shape,
    options: &ConvOptions<2>,
    dtypes: MatmulElems,
    inputs: impl FnOnce(TensorBinding<R>) -> ConvolutionInputs<R>,
) -> Result<CubeTensor<R>, ConvSetupError> {
    let out = crate::cube_util::empty_dense(like, permute_nchw_to_nhwc_shape(out_shape), like.dtype);
    launch(kernel, &like.client, inputs(out.clone().binding()), options, dtypes)?;
    Ok(if channels_last() { permute_nhwc_to_nchw(out) } else { to_channels_first(out) })
}

/// The data gradient of a strided convolution from stride-1 ones (`stride1`).
///
/// With stride s, `x[i]` feeds `y[o]` through tap t when `o·s + t·d − p = i`. Undilated
/// convolutions (ResNet's) split by the input's phase `i mod s` ([`Phase`]): the inputs of
/// one phase are fed by one tap in s, so each phase's gradient is a stride-1 data gradient
/// with those taps as its kernel, at `1/s²` of the input's size; the phases are then
/// interleaved. That does the forward pass's multiply-adds, where the general form below does
/// s² times as many.
///
/// General form: spreading the output gradient to `g[o·s] = dy[o]` (zeros between) makes the
/// relation `j + t·d − p = i` with `j = o·s`: the stride-1 convolution's, whose output has
/// `H + 2p − d(k−1)` rows; the spread gradient is cut or zero-extended to that size (its
/// rows past `(H'−1)·s` are zeros either way).
pub fn strided_data_grad<B: Backend, E>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    options: ConvOptions<2>,
    stride1: impl Fn(FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, ConvOptions<2>) -> Result<FloatTensor<B>, E>,
) -> Result<FloatTensor<B>, E> {
    let (xs, ws) = (x.shape(), weight.shape());
    if let Some(phases) = Phase::all(&xs, &ws, &options) {
        return phased_data_grad::<B, E>(&x, weight, grad, &options, &phases, stride1);
    }
    let size = |i: usize| xs[2 + i] + 2 * options.padding[i] - options.dilation[i] * (ws[2 + i] - 1);
    let grad = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(grad));
    let spread = spread_with_zeros(grad, options.stride, [size(0), size(1)]);
    let options = ConvOptions::new([1, 1], options.padding, options.dilation, options.groups);
    stride1(x, weight, spread.into_primitive().tensor(), options)
}

/// One phase `r` of one spatial dimension of a strided convolution's data gradient: the
/// inputs `i = s·m + r`. They are fed by the taps `t = first + s·u` (`u < taps`), from
/// `dy[m + pad − u]`, so their gradient is the stride-1 data gradient of the kernel of those
/// taps with padding `pad`, over `len` inputs (from `len + pad` rows of `dy`, cut or
/// zero-extended to that).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phase {
    pub first: usize,
    pub taps: usize,
    pub pad: usize,
    pub len: usize,
}

impl Phase {
    /// Phase `r` of a dimension of `n` inputs, kernel `k`, stride `s`, padding `p`
    /// (dilation 1).
    pub fn new(n: usize, k: usize, s: usize, p: usize, r: usize) -> Phase {
        let first = (r + p) % s;
        Phase { first, taps: if first < k { (k - first).div_ceil(s) } else { 0 }, pad: (r + p - first) / s, len: n.saturating_sub(r).div_ceil(s) }
    }

    /// Each dimension's phases, when every one fits the stride-1 relation (padding one less
    /// than its taps: ResNet's strided 3 × 3 and 1 × 1 convolutions) or has no taps, and
    /// every one has inputs; `None` otherwise (dilation, the 7 × 7 stem, tiny inputs).
    pub fn all(x: &Shape, weight: &Shape, o: &ConvOptions<2>) -> Option<[Vec<Phase>; 2]> {
        if o.dilation != [1, 1] || o.groups != 1 {
            return None;
        }
        let dim = |i: usize| -> Option<Vec<Phase>> {
            let phases: Vec<Phase> = (0..o.stride[i]).map(|r| Phase::new(x[2 + i], weight[2 + i], o.stride[i], o.padding[i], r)).collect();
            phases.iter().all(|ph| ph.len > 0 && (ph.taps == 0 || ph.taps == ph.pad + 1)).then_some(phases)
        };
        Some([dim(0)?, dim(1)?])
    }
}

/// [`strided_data_grad`] by phases: one stride-1 data gradient per pair of row and column
/// phases that has taps, written into every s-th row and column of the gradient from the
/// phase's own; zeros for the others.
fn phased_data_grad<B: Backend, E>(
    x: &FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    options: &ConvOptions<2>,
    [rows, cols]: &[Vec<Phase>; 2],
    stride1: impl Fn(FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, ConvOptions<2>) -> Result<FloatTensor<B>, E>,
) -> Result<FloatTensor<B>, E> {
    let xs = x.shape();
    let (n, c) = (xs[0], xs[1]);
    let (dtype, device) = (FloatDType::from(x.dtype()), B::float_device(x));
    let t4 = |t: FloatTensor<B>| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(t));
    let (weight, grad) = (t4(weight), t4(grad));
    let [sh, sw] = options.stride;
    let all = Slice::new(0, None, 1);
    let every = |start: usize, step: usize| Slice::new(start as isize, None, step as isize);
    // Phases without taps get no gradient: they stay zero.
    let mut dx = t4(B::float_zeros(xs.clone(), &device, dtype));
    for (r, ph) in rows.iter().enumerate().filter(|(_, p)| p.taps > 0) {
        for (q, pw) in cols.iter().enumerate().filter(|(_, p)| p.taps > 0) {
            let w = weight.clone().slice([all, all, every(ph.first, sh), every(pw.first, sw)]);
            let dy = fit(fit(grad.clone(), 2, ph.len + ph.pad), 3, pw.len + pw.pad);
            // Only its shape is read: the stride-1 problem's input.
            let x = B::float_empty(Shape::new([n, c, ph.len, pw.len]), &device, dtype);
            let o = ConvOptions::new([1, 1], [ph.pad, pw.pad], [1, 1], 1);
            let phase = t4(stride1(x, w.into_primitive().tensor(), dy.into_primitive().tensor(), o)?);
            dx = dx.slice_assign([all, all, every(r, sh), every(q, sw)], phase);
        }
    }
    Ok(dx.into_primitive().tensor())
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
pub(crate) fn autodiff_conv<B: ConvKernels + ResidualKernels, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    options: ConvOptions<2>,
) -> FloatTensor<Autodiff<B, C>> {
    #[derive(Debug)]
    struct ConvBackward;

    impl<B: ConvKernels + ResidualKernels> Backward<B, 2> for ConvBackward {
        type State = (NodeId, NodeId, ConvOptions<2>);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
            let [node_x, node_weight] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (x_state, weight_state, options) = ops.state;
            let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
            let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
            let grad = match (&node_x, &node_weight) {
                (Some(_), Some(_)) => B::backward_grad(&x, &weight, grad, &options),
                _ => grad,
            };
            if let Some(node) = node_x {
                // A block's input also feeds its shortcut: the sum is ours (register_summed).
                register_summed!(B, grads, node, B::conv_dgrad(x.clone(), weight.clone(), grad.clone(), options.clone()));
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

/// The kernels [`conv_pass_on`] can run on backend `B`: [`ConvKernel::candidates`] (or
/// [`ConvKernel::all`]) on the CUDA backend; on the CPU's, `flex` (its own kernels) and
/// `matmul` ([`crate::as_matmul`], which runs on any backend's matmul).
pub fn conv_kernel_names<B: Backend>(all: bool) -> Vec<String> {
    if crate::is::<B, crate::CudaBackend>() {
        let kernels = if all { ConvKernel::all() } else { ConvKernel::candidates() };
        kernels.iter().map(|k| k.to_string()).collect()
    } else if crate::is::<B, Flex>() {
        vec![FLEX.to_string(), ConvKernel::Matmul.to_string()]
    } else {
        Vec::new()
    }
}

const FLEX: &str = "flex";

/// One `pass` of the convolution of `x` by `weight` (with output gradient `grad` for the
/// gradients) on the named kernel, with no fallback: what `sca bench convs` times. The
/// error says why the kernel refused the shape.
pub fn conv_pass_on<B: Backend>(kernel: &str, pass: Pass, x: Tensor<B, 4>, weight: Tensor<B, 4>, grad: Tensor<B, 4>, options: ConvOptions<2>) -> Result<Tensor<B, 4>, String> {
    let prim = |t: Tensor<B, 4>| t.into_primitive().tensor();
    let (x, weight, grad) = (prim(x), prim(weight), prim(grad));
    let out = if crate::is::<B, crate::CudaBackend>() {
        let k: ConvKernel = kernel.parse()?;
        let cube = |t: FloatTensor<B>| crate::same_type::<_, FloatTensor<crate::CudaBackend>>(t);
        let (x, weight, grad) = (cube(x), cube(weight), cube(grad));
        let (xs, ws) = (x.shape(), weight.shape());
        let y = match pass {
            Pass::Forward => forward_on(k, x, weight, &options),
            Pass::Data if options.stride != [1, 1] => {
                strided_data_grad::<crate::CudaBackend, _>(x, weight, grad, options, |x, w, g, o| data_on(k, g, w, x.shape(), &o))
            }
            Pass::Data => data_on(k, grad, weight, xs, &options),
            Pass::Weight => weight_on(k, x, grad, ws, &options),
        };
        crate::same_type::<FloatTensor<crate::CudaBackend>, FloatTensor<B>>(y.map_err(|e| format!("{e:?}").trim().to_string())?)
    } else if crate::is::<B, Flex>() && (kernel == FLEX || kernel == ConvKernel::Matmul.to_string()) {
        let flex = |t: FloatTensor<B>| crate::same_type::<_, FloatTensor<Flex>>(t);
        let (x, weight, grad) = (flex(x), flex(weight), flex(grad));
        let matmul = |pass, x, w, g, o: ConvOptions<2>| as_matmul::run::<Flex>(pass, x, w, g, &o, 64);
        let y = match (kernel == FLEX, pass) {
            (true, Pass::Forward) => Flex::conv_fwd(x, weight, options),
            (true, Pass::Data) => Flex::conv_dgrad(x, weight, grad, options),
            (true, Pass::Weight) => Flex::conv_wgrad(x, weight, grad, options),
            (false, Pass::Data) if options.stride != [1, 1] => strided_data_grad::<Flex, _>(x, weight, grad, options, |x, w, g, o| matmul(Pass::Data, x, w, g, o))?,
            (false, pass) => matmul(pass, x, weight, grad, options)?,
        };
        crate::same_type::<FloatTensor<Flex>, FloatTensor<B>>(y)
    } else {
        return Err(format!("no kernel '{kernel}' on this backend (it has: {})", conv_kernel_names::<B>(true).join(", ")));
    };
    Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
}
