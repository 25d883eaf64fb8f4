//! The explicit-kernel operations against Burn's own: outputs and gradients on the CPU
//! backend (Flex), where the autodiff operations run over Flex's kernels, and the strided
//! data gradient that the CUDA path computes as a stride-1 one.

use burn::backend::{Autodiff, Flex};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::ops::{ConvOptions, ModuleOps};
use burn::tensor::{Distribution, FloatDType, Tensor, TensorData, TensorPrimitive};
use sca_kernels::conv::strided_data_grad;
use sca_kernels::{gemm_conv2d, gemm_linear, gemm_matmul, runs_explicitly, CudaBackend};

type B = Autodiff<Flex>;

fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
    t.cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap()
}

/// Largest difference relative to the reference's largest magnitude (which must not be ~0).
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 1e-3, "degenerate reference");
    got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

/// A fixed, non-uniform weighting of an output, so every element's gradient differs.
fn weighting<const D: usize>(y: &Tensor<B, D>) -> Tensor<B, D> {
    let n = y.shape().num_elements();
    Tensor::from_data(TensorData::new((0..n).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0).collect(), y.shape()), &y.device())
}

#[test]
fn explicit_kernels_serve_the_binaries_backends() {
    assert!(runs_explicitly::<B>() && runs_explicitly::<Flex>());
    assert!(runs_explicitly::<Autodiff<CudaBackend>>() && runs_explicitly::<CudaBackend>());
    // Any other backend (here autodiff with gradient checkpointing) keeps Burn's operations.
    assert!(!runs_explicitly::<Autodiff<Flex, burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing>>());
}

#[test]
fn gemm_conv_gives_conv2d_outputs_and_gradients() {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 5);
    // (cin, cout, k, stride, padding, dilation, h, w)
    for (cin, cout, k, s, p, d, h, w) in [(4, 6, 3, 1, 1, 1, 9, 7), (3, 8, 7, 2, 3, 1, 15, 12), (5, 4, 1, 2, 0, 1, 8, 9), (4, 4, 3, 2, 2, 2, 10, 10)] {
        let x = Tensor::<B, 4>::random([2, cin, h, w], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let wt = Tensor::<B, 4>::random([cout, cin, k, k], Distribution::Normal(0.0, 0.3), &device).require_grad();
        let options = ConvOptions::new([s, s], [p, p], [d, d], 1);
        let run = |gemm: bool| {
            let y = if gemm { gemm_conv2d(x.clone(), wt.clone(), options.clone()) } else { burn::tensor::module::conv2d(x.clone(), wt.clone(), None, options.clone()) };
            let grads = (y.clone() * weighting(&y)).sum().backward();
            [values(y.inner()), values(x.grad(&grads).unwrap()), values(wt.grad(&grads).unwrap())]
        };
        let (got, want) = (run(true), run(false));
        for (what, g, w) in [("output", &got[0], &want[0]), ("x grad", &got[1], &want[1]), ("weight grad", &got[2], &want[2])] {
            let e = rel_err(g, w);
            assert!(e < 1e-5, "k={k} s={s}: {what} off by {e}");
        }
    }
}

#[test]
fn strided_data_gradient_equals_the_stride_one_form() {
    let device = Default::default();
    <Flex as burn::tensor::backend::Backend>::seed(&device, 9);
    // (cin, cout, k, stride, padding, dilation, h, w): ResNet's strided 3×3 and 1×1 and its
    // 7×7 stem, odd sides (where the last rows are not reached), stride 3, and dilation.
    let cases = [
        (4, 6, 3, 2, 1, 1, 8, 8),
        (4, 6, 3, 2, 1, 1, 9, 7),
        (6, 5, 1, 2, 0, 1, 7, 10),
        (3, 4, 1, 3, 0, 1, 8, 11),
        (3, 4, 7, 2, 3, 1, 13, 11),
        (3, 3, 3, 3, 1, 1, 11, 10),
        (3, 3, 3, 2, 2, 2, 9, 9),
    ];
    for (cin, cout, k, s, p, d, h, w) in cases {
        let x = Tensor::<Flex, 4>::random([2, cin, h, w], Distribution::Normal(0.0, 1.0), &device);
        let wt = Tensor::<Flex, 4>::random([cout, cin, k, k], Distribution::Normal(0.0, 0.3), &device);
        let options = ConvOptions::new([s, s], [p, p], [d, d], 1);
        let y = burn::tensor::module::conv2d(x.clone(), wt.clone(), None, options.clone());
        let g = Tensor::<Flex, 4>::random(y.dims(), Distribution::Normal(0.0, 1.0), &device);
        for dtype in [FloatDType::F32, FloatDType::BF16] {
            let prim = |t: &Tensor<Flex, 4>| t.clone().cast(dtype).into_primitive().tensor();
            let want = Flex::conv2d_x_backward(prim(&x), prim(&wt), prim(&g), options.clone());
            let got = strided_data_grad::<Flex, _>(prim(&x), prim(&wt), prim(&g), options.clone(), |x, w, gs, o| {
                use burn::tensor::TensorMetadata;
                assert_eq!(o.stride, [1, 1]);
                // A 1×1 convolution's stride-1 problem is at the output's size (no zeros); a
                // 3×3 stride-2 one's are by phases, on kernels of the taps of each.
                if k == 1 {
                    assert_eq!(gs.shape(), g.shape(), "1×1, stride {s}: the output gradient as it is");
                }
                if (k, s, p) == (3, 2, 1) {
                    assert!(w.shape()[2] < 3 && w.shape()[3] < 3, "3×3, stride 2: by phases");
                }
                Ok::<_, std::convert::Infallible>(Flex::conv2d_x_backward(x, w, gs, o))
            });
            let Ok(got) = got;
            let as_tensor = |p| Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(p));
            let (got, want) = (as_tensor(got), as_tensor(want));
            assert_eq!(got.dims(), [2, cin, h, w]);
            let e = rel_err(&values(got), &values(want));
            // bf16: both sides sum the same rounded products, in different orders.
            let bound = if dtype == FloatDType::F32 { 1e-5 } else { 2e-2 };
            assert!(e < bound, "{dtype:?} k={k} s={s} d={d} {h}x{w}: off by {e}");
        }
    }
}

#[test]
fn gemm_matmul_and_linear_give_burns_outputs_and_gradients() {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 7);
    let a = Tensor::<B, 3>::random([3, 5, 7], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let b = Tensor::<B, 3>::random([3, 7, 4], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let run = |gemm: bool| {
        let y = if gemm { gemm_matmul(a.clone(), b.clone()) } else { a.clone().matmul(b.clone()) };
        let grads = (y.clone() * weighting(&y)).sum().backward();
        [values(y.inner()), values(a.grad(&grads).unwrap()), values(b.grad(&grads).unwrap())]
    };
    let (got, want) = (run(true), run(false));
    for i in 0..3 {
        assert!(rel_err(&got[i], &want[i]) < 1e-6, "matmul part {i}");
    }

    let linear: Linear<B> = LinearConfig::new(6, 3).init(&device);
    let x = Tensor::<B, 2>::random([4, 6], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let run = |gemm: bool| {
        let y = if gemm { gemm_linear(&linear, x.clone()) } else { linear.forward(x.clone()) };
        let grads = (y.clone() * weighting(&y)).sum().backward();
        let bias = linear.bias.as_ref().unwrap().val();
        [values(y.inner()), values(x.grad(&grads).unwrap()), values(linear.weight.val().grad(&grads).unwrap()), bias.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap()]
    };
    let (got, want) = (run(true), run(false));
    for i in 0..4 {
        assert!(rel_err(&got[i], &want[i]) < 1e-6, "linear part {i}");
    }
}
