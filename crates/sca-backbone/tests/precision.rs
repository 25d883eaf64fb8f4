//! Convolutions in bf16 / f16 (autocast style) against the same convolutions in f32: the
//! results agree to the rounding of the compute type, differ from f32 by more than f32's own
//! rounding (the casts happen), and everything handed back (output, input gradient, weight
//! gradient) is f32 again.

use burn::backend::{Autodiff, Flex};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::{DType, Distribution, Tensor, TensorData};
use sca_backbone::{conv_forward_in, Arch, ConvImpl, Precision, ResNetConfig};

type B = Autodiff<Flex>;

/// Output, input gradient, weight and bias gradients, all checked to be f32.
fn run(conv: &Conv2d<B>, x: &Tensor<B, 4>, imp: ConvImpl, precision: Precision) -> Vec<Vec<f32>> {
    let x = x.clone().detach().require_grad();
    let y = conv_forward_in(conv, x.clone(), imp, precision);
    let r = Tensor::<B, 4>::from_data(
        TensorData::new((0..y.shape().num_elements()).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0).collect(), y.shape()),
        &y.device(),
    );
    let grads = (y.clone() * r).sum().backward();
    let tensors = [
        y.into_data(),
        x.grad(&grads).expect("x grad").into_data(),
        conv.weight.val().grad(&grads).expect("weight grad").into_data(),
        conv.bias.as_ref().unwrap().val().grad(&grads).expect("bias grad").into_data(),
    ];
    tensors
        .into_iter()
        .map(|t| {
            assert_eq!(t.dtype, DType::F32, "{precision} {imp}: results come back in f32");
            t.to_vec::<f32>().unwrap()
        })
        .collect()
}

/// Largest difference relative to the largest magnitude of `want`.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 1e-3, "degenerate reference");
    got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

#[test]
fn low_precision_convolutions_agree_with_f32_to_their_rounding() {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 3);
    // (cin, cout, kernel, stride, padding (top, left, bottom, right)): a 3×3, a 1×1, and a
    // strided 7×7 stem with uneven padding.
    let cases = [(16, 24, 3, 1, (1, 1, 1, 1)), (32, 16, 1, 1, (0, 0, 0, 0)), (3, 8, 7, 2, (3, 2, 1, 3))];
    for (cin, cout, k, stride, (t, l, b, r)) in cases {
        let conv: Conv2d<B> = Conv2dConfig::new([cin, cout], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(t, l, b, r))
            .init(&device);
        let x = Tensor::<B, 4>::random([2, cin, 11, 9], Distribution::Normal(0.0, 1.0), &device);
        for imp in ConvImpl::ALL {
            let want = run(&conv, &x, imp, Precision::F32);
            // Unit roundoff: bf16 2^-8, f16 2^-11. Inputs and weights are rounded once. The
            // CPU backend sums bf16 products in f32 but f16 products in f16, so f16 also
            // carries the rounding of its longest sum (n terms, growing like √n).
            let n = (cin * k * k).max(cout * k * k).max(2 * 11 * 9) as f32;
            for (precision, unit, sums) in [(Precision::Bf16, 2f32.powi(-8), 0.0), (Precision::F16, 2f32.powi(-11), 2.0 * n.sqrt())] {
                let got = run(&conv, &x, imp, precision);
                for (what, g, w) in [("output", &got[0], &want[0]), ("input grad", &got[1], &want[1]), ("weight grad", &got[2], &want[2]), ("bias grad", &got[3], &want[3])] {
                    let e = rel_err(g, w);
                    assert!(e <= (8.0 + sums) * unit, "{precision} {imp} k={k}: {what} off by {e} (unit {unit})");
                    if what != "bias grad" {
                        // More than f32 could explain: the arithmetic really was narrower.
                        assert!(e >= 1e-3 * unit, "{precision} {imp} k={k}: {what} off by only {e}");
                    }
                }
            }
        }
    }
}

#[test]
fn a_bf16_resnet_gives_the_f32_features_to_a_percent() {
    let device = Default::default();
    let f32_net = ResNetConfig::new(Arch::ResNet18).with_small_stem(true).init::<Flex>(&device);
    let bf16_net = f32_net.clone().with_precision(Precision::Bf16);
    let x = Tensor::<Flex, 4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let want = f32_net.forward_features(x.clone()).into_data();
    let got = bf16_net.forward_features(x).into_data();
    assert_eq!(got.dtype, DType::F32);
    let (g, w) = (got.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
    let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
    let diff: Vec<f32> = g.iter().zip(&w).map(|(a, b)| a - b).collect();
    let rel = norm(&diff) / norm(&w);
    assert!(rel < 0.02 && rel > 1e-4, "bf16 features differ from f32 by {rel} (relative L2)");
}

#[test]
fn precision_names_and_defaults() {
    assert_eq!(Precision::default(), Precision::F32);
    assert_eq!(ResNetConfig::new(Arch::ResNet18).precision, Precision::F32);
    for p in Precision::ALL {
        assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
        assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
    }
    assert!("fp8".parse::<Precision>().unwrap_err().contains("expected f32, bf16 or f16"));
    assert!(Precision::F16.needs_loss_scaling() && !Precision::Bf16.needs_loss_scaling());
}
