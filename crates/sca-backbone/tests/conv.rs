//! The matmul convolution path against Burn's `conv2d`: outputs and gradients.

use burn::backend::{Autodiff, Flex};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::{Distribution, Tensor, TensorData};
use sca_backbone::conv::{conv_forward, conv_matmul_with_layout, Layout};
use sca_backbone::{Arch, ConvImpl, ResNetConfig};

type B = Autodiff<Flex>;

#[derive(Clone, Copy, Debug)]
struct Case {
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    /// (top, left, bottom, right)
    pad: (usize, usize, usize, usize),
    dilation: usize,
    bias: bool,
    batch: usize,
    h: usize,
    w: usize,
}

#[allow(clippy::too_many_arguments)] // one per field of a table row
const fn case(cin: usize, cout: usize, k: usize, stride: usize, p: usize, batch: usize, h: usize, w: usize) -> Case {
    Case { cin, cout, k, stride, pad: (p, p, p, p), dilation: 1, bias: false, batch, h, w }
}

fn max_abs(t: &TensorData) -> f32 {
    t.as_slice::<f32>().unwrap().iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// `got` equals `want` within 1e-4 of `want`'s largest magnitude, which must be non-trivial.
fn assert_close(what: &str, got: TensorData, want: TensorData) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    let scale = max_abs(&want);
    assert!(scale > 1e-3, "{what}: degenerate reference (max {scale})");
    let (g, w) = (got.as_slice::<f32>().unwrap(), want.as_slice::<f32>().unwrap());
    let err = g.iter().zip(w).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-4 * scale, "{what}: max error {err} vs scale {scale}");
}

/// Output, input gradient and weight (and bias) gradient of `f` with a fixed output weighting.
fn run(conv: &Conv2d<B>, x: &Tensor<B, 4>, f: impl Fn(&Conv2d<B>, Tensor<B, 4>) -> Tensor<B, 4>) -> Vec<TensorData> {
    let x = x.clone().detach().require_grad();
    let y = f(conv, x.clone());
    // A non-uniform output gradient, so every tap and channel is distinguished.
    let r = Tensor::<B, 4>::from_data(
        TensorData::new((0..y.shape().num_elements()).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0).collect(), y.shape()),
        &y.device(),
    );
    let grads = (y.clone() * r).sum().backward();
    let mut out = vec![
        y.into_data(),
        x.grad(&grads).expect("x grad").into_data(),
        conv.weight.val().grad(&grads).expect("weight grad").into_data(),
    ];
    if let Some(b) = &conv.bias {
        out.push(b.val().grad(&grads).expect("bias grad").into_data());
    }
    out
}

fn check(c: Case) {
    let device = Default::default();
    let (t, l, b, r) = c.pad;
    let conv: Conv2d<B> = Conv2dConfig::new([c.cin, c.cout], [c.k, c.k])
        .with_stride([c.stride, c.stride])
        .with_dilation([c.dilation, c.dilation])
        .with_padding(PaddingConfig2d::Explicit(t, l, b, r))
        .with_bias(c.bias)
        .init(&device);
    let x = Tensor::<B, 4>::random([c.batch, c.cin, c.h, c.w], Distribution::Normal(0.0, 1.0), &device);
    let want = run(&conv, &x, |m, x| m.forward(x));
    let names = ["output", "input grad", "weight grad", "bias grad"];
    type Path<'a, B> = (&'a str, &'a dyn Fn(&Conv2d<B>, Tensor<B, 4>) -> Tensor<B, 4>);
    let mut paths: Vec<Path<B>> = vec![
        ("matmul (automatic layout)", &|m, x| conv_forward(m, x, ConvImpl::Matmul)),
        ("rows", &|m, x| conv_matmul_with_layout(m, x, Layout::Rows)),
        // The explicit-kernel autodiff operation (on Flex: the backend's kernels underneath).
        ("gemm", &|m, x| conv_forward(m, x, ConvImpl::Gemm)),
    ];
    if c.k == 1 && c.stride == 1 && c.pad == (0, 0, 0, 0) {
        paths.push(("batched", &|m, x| conv_matmul_with_layout(m, x, Layout::Batched)));
    }
    for (path, f) in paths {
        let got = run(&conv, &x, f);
        assert_eq!(got.len(), want.len());
        for ((g, w), name) in got.into_iter().zip(want.iter().cloned()).zip(names) {
            assert_close(&format!("{path} {name}, {c:?}"), g, w);
        }
    }
}

#[test]
fn matmul_and_gemm_convs_match_conv2d_in_outputs_and_gradients() {
    let cases = [
        // 1×1, stride 1 (narrow weights pick the batched layout, wide ones the row layout)
        // and stride 2 (even and odd sides: stride 2 keeps rows 0, 2, ...)
        case(8, 16, 1, 1, 0, 2, 6, 5),
        case(64, 64, 1, 1, 0, 2, 2, 2),
        case(8, 12, 1, 2, 0, 2, 8, 8),
        case(6, 5, 1, 2, 0, 3, 7, 9),
        // 3×3, the ResNet cases, and odd / non-square sides
        case(4, 8, 3, 1, 1, 2, 8, 8),
        case(5, 7, 3, 2, 1, 2, 9, 7),
        case(6, 4, 3, 2, 1, 1, 8, 6),
        case(3, 8, 3, 1, 0, 2, 5, 6),
        // 7×7 stride-2 stem, even and odd sides
        case(3, 8, 7, 2, 3, 2, 16, 16),
        case(3, 4, 7, 2, 3, 1, 11, 13),
        // Asymmetric padding, dilation and a bias
        Case { pad: (1, 0, 2, 1), ..case(4, 6, 3, 1, 0, 2, 6, 7) },
        Case { dilation: 2, ..case(4, 6, 3, 1, 2, 2, 7, 7) },
        Case { bias: true, ..case(4, 6, 3, 2, 1, 2, 7, 7) },
        Case { bias: true, ..case(4, 6, 1, 1, 0, 2, 3, 3) },
        // Spatial 1×1 output (ResNet's last stage on tiny inputs)
        case(8, 8, 3, 2, 1, 2, 2, 2),
    ];
    for c in cases {
        check(c);
    }
}

#[test]
fn resnet18_forward_is_the_same_under_both_impls() {
    let device = Default::default();
    type F = Flex;
    let native = ResNetConfig::new(Arch::ResNet18).with_small_stem(true).with_conv_impl(ConvImpl::Native).init::<F>(&device);
    assert_eq!(native.conv_impl, ConvImpl::Native);
    let x = Tensor::<F, 4>::random([2, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    // Run before cloning: Burn initialises parameters lazily and a clone of an uninitialised
    // module draws its own weights.
    let a = native.forward_stages(x.clone());
    let matmul = native.clone().with_conv_impl(ConvImpl::Matmul);
    let b = matmul.forward_stages(x);
    for (i, (a, b)) in a.to_array().into_iter().zip(b.to_array()).enumerate() {
        assert_close(&format!("stage c{}", i + 2), b.into_data(), a.into_data());
    }
    // Switching the impl changes no parameter.
    assert_eq!(native.num_params(), matmul.num_params());
}

#[test]
fn conv_impl_config_and_names() {
    assert_eq!(ResNetConfig::new(Arch::ResNet18).conv_impl, ConvImpl::Auto);
    assert_eq!(ConvImpl::default(), ConvImpl::Auto);
    // Auto is gemm on CUDA, matmul elsewhere; the others stay as they are.
    assert_eq!(ConvImpl::Auto.on::<burn::backend::Autodiff<sca_kernels::CudaBackend>>(), ConvImpl::Gemm);
    assert_eq!(ConvImpl::Auto.on::<B>(), ConvImpl::Matmul);
    assert_eq!(ConvImpl::Native.on::<sca_kernels::CudaBackend>(), ConvImpl::Native);
    for imp in ConvImpl::ALL {
        assert_eq!(imp.to_string().parse::<ConvImpl>(), Ok(imp));
        assert_eq!(serde_json::to_string(&imp).unwrap(), format!("\"{imp}\""));
    }
    assert!("winograd".parse::<ConvImpl>().is_err());
    let json = serde_json::to_string(&ResNetConfig::new(Arch::ResNet50)).unwrap();
    assert!(json.contains(r#""conv_impl":"auto""#), "{json}");
    let cfg: ResNetConfig = serde_json::from_str(&json.replace(r#""auto""#, r#""native""#)).unwrap();
    assert_eq!(cfg.conv_impl, ConvImpl::Native);
}

#[test]
fn fast_batch_norm_matches_burn_in_outputs_gradients_and_running_stats() {
    use burn::nn::{BatchNorm, BatchNormConfig};
    use sca_backbone::norm::batch_norm_forward;
    let device = Default::default();
    // Non-trivial γ, β and running statistics, so every term of the update is exercised.
    let make = || -> BatchNorm<B> {
        let mut bn = BatchNormConfig::new(6).with_momentum(0.3).init(&device);
        let ramp = |a: f32, s: f32| Tensor::<B, 1>::from_data(TensorData::new((0..6).map(|i| a + s * i as f32).collect(), [6]), &device);
        bn.gamma = bn.gamma.map(|_| ramp(0.5, 0.25).require_grad());
        bn.beta = bn.beta.map(|_| ramp(-0.3, 0.1).require_grad());
        bn.running_mean = burn::module::RunningState::new(ramp(0.2, -0.05));
        bn.running_var = burn::module::RunningState::new(ramp(1.5, 0.2));
        bn
    };
    let (burn_bn, fast_bn) = (make(), make());
    // Per-channel offsets and scales far from 0 / 1, so centring and scaling matter.
    let x = Tensor::<B, 4>::random([3, 6, 5, 4], Distribution::Normal(0.0, 1.0), &device)
        * Tensor::<B, 1>::from_data(TensorData::new(vec![0.5f32, 1.0, 2.0, 3.0, 0.7, 1.3], [6]), &device).reshape([1, 6, 1, 1])
        + 2.0;
    let run = |f: &dyn Fn(Tensor<B, 4>) -> Tensor<B, 4>, bn: &BatchNorm<B>| {
        let x = x.clone().detach().require_grad();
        let y = f(x.clone());
        let r = Tensor::<B, 4>::from_data(
            TensorData::new((0..y.shape().num_elements()).map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0).collect(), y.shape()),
            &device,
        );
        let grads = (y.clone() * r).sum().backward();
        vec![
            y.into_data(),
            x.grad(&grads).unwrap().into_data(),
            bn.gamma.val().grad(&grads).unwrap().into_data(),
            bn.beta.val().grad(&grads).unwrap().into_data(),
            bn.running_mean.value().into_data(),
            bn.running_var.value().into_data(),
        ]
    };
    let want = run(&|x| burn_bn.forward(x), &burn_bn);
    let got = run(&|x| batch_norm_forward(&fast_bn, x), &fast_bn);
    let names = ["output", "input grad", "gamma grad", "beta grad", "running mean", "running var"];
    for ((g, w), name) in got.into_iter().zip(want).zip(names) {
        assert_close(name, g, w);
    }
    // With the ReLU inside the operation: as Burn's BatchNorm then a ReLU (the running
    // statistics took a second step in both).
    let want = run(&|x| burn::tensor::activation::relu(burn_bn.forward(x)), &burn_bn);
    let got = run(&|x| sca_backbone::norm::batch_norm_relu_forward(&fast_bn, x), &fast_bn);
    assert!(want[0].as_slice::<f32>().unwrap().iter().filter(|v| **v == 0.0).count() > 10, "the ReLU clamps some outputs");
    for ((g, w), name) in got.into_iter().zip(want).zip(names) {
        assert_close(&format!("{name}, with ReLU"), g, w);
    }
}


#[test]
fn fast_batch_norm_inference_matches_burn() {
    use burn::backend::Flex;
    use burn::nn::BatchNormConfig;
    use sca_backbone::norm::batch_norm_forward;
    let device = Default::default();
    let ramp = |a: f32, s: f32| Tensor::<Flex, 1>::from_data(TensorData::new((0..5).map(|i| a + s * i as f32).collect(), [5]), &device);
    let mut bn = BatchNormConfig::new(5).init::<Flex>(&device);
    bn.gamma = bn.gamma.map(|_| ramp(0.5, 0.25));
    bn.beta = bn.beta.map(|_| ramp(-0.3, 0.1));
    bn.running_mean = burn::module::RunningState::new(ramp(0.2, -0.05));
    bn.running_var = burn::module::RunningState::new(ramp(1.5, 0.2));
    let x = Tensor::<Flex, 4>::random([2, 5, 3, 4], Distribution::Normal(1.0, 2.0), &device);
    let want: Vec<f32> = bn.forward(x.clone()).into_data().to_vec().unwrap();
    let got: Vec<f32> = batch_norm_forward(&bn, x.clone()).into_data().to_vec().unwrap();
    // Independent value for one element: (x − μ)/√(σ² + ε)·γ + β with channel 3's numbers.
    let xv: Vec<f32> = x.into_data().to_vec().unwrap();
    let i = 3 * 12 + 7; // image 0, channel 3, position 7
    let hand = (xv[i] - (0.2 - 0.15)) / (1.5f32 + 0.6 + 1e-5).sqrt() * (0.5 + 0.75) + (-0.3 + 0.3);
    assert!((got[i] - hand).abs() < 1e-5, "{} vs hand {hand}", got[i]);
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "element {k}: {g} vs Burn {w}");
    }
}

#[test]
fn synchronised_batch_norm_uses_the_global_batch() {
    // One replica whose twin holds the same images: summing a statistic over the two
    // replicas doubles it. SyncBN on x must then equal plain BN on the batch [x; x] in its
    // output and running statistics, and give half of its gradients (each replica carries
    // its own half; the gradient all-reduce adds the halves back).
    use burn::nn::BatchNormConfig;
    use sca_backbone::norm::batch_norm_forward;
    use sca_dist::sync_bn::{self, StatSum};
    use std::rc::Rc;
    let device = Default::default();
    let bn_sync = BatchNormConfig::new(4).with_momentum(0.3).init::<B>(&device);
    let bn_plain = BatchNormConfig::new(4).with_momentum(0.3).init::<B>(&device);
    let x = Tensor::<B, 4>::random([2, 4, 3, 3], Distribution::Normal(1.0, 2.0), &device);
    let r = Tensor::<B, 4>::random([2, 4, 3, 3], Distribution::Normal(0.0, 1.0), &device);

    let twin: StatSum<B> = Rc::new(|t| t.mul_scalar(2.0));
    let synced = sync_bn::install(2, twin);
    let xs = x.clone().detach().require_grad();
    let ys = batch_norm_forward(&bn_sync, xs.clone());
    drop(synced);
    let gs = (ys.clone() * r.clone()).sum().backward();

    let xp = x.detach().require_grad();
    let yp = batch_norm_forward(&bn_plain, Tensor::cat(vec![xp.clone(), xp.clone()], 0));
    let gp = (yp.clone() * Tensor::cat(vec![r.clone(), r], 0)).sum().backward();

    assert_close("output", ys.into_data(), yp.narrow(0, 0, 2).into_data());
    assert_close("input grad", xs.grad(&gs).unwrap().into_data(), xp.grad(&gp).unwrap().div_scalar(2.0).into_data());
    assert_close("gamma grad", bn_sync.gamma.val().grad(&gs).unwrap().into_data(), bn_plain.gamma.val().grad(&gp).unwrap().div_scalar(2.0).into_data());
    assert_close("running var", bn_sync.running_var.value_sync().into_data(), bn_plain.running_var.value_sync().into_data());
    assert_close("running mean", bn_sync.running_mean.value_sync().into_data(), bn_plain.running_mean.value_sync().into_data());
}
