use super::*;
use burn::backend::{Autodiff, Flex};
use burn::tensor::TensorData;
use std::cell::Cell;

type B = Flex;
type AB = Autodiff<Flex>;

/// Deterministic pseudo-random values in [-1, 1).
fn gen(n: usize, salt: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let x = (i + 1)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(salt)
                .rotate_left(23);
            (x % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn feats<Bk: Backend>(n: usize, d: usize, h: usize, w: usize, salt: u64) -> Tensor<Bk, 4> {
    Tensor::from_data(
        TensorData::new(gen(n * d * h * w, salt), [n, d, h, w]),
        &Default::default(),
    )
}

fn labels<Bk: Backend>(v: &[i64]) -> Tensor<Bk, 1, Int> {
    let v: Vec<u32> = v.iter().map(|&x| x as u32).collect();
    labels_tensor(&v, &Default::default())
}

fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn scalar<Bk: Backend>(t: Tensor<Bk, 1>) -> f64 {
    values(t)[0] as f64
}

#[test]
#[rustfmt::skip]
fn outputs_and_losses_match_their_definitions() {
    // (B, P, D, H, W, C)
    fn check(b: usize, p: usize, d: usize, h: usize, w: usize, c: usize) {
        let addon = AddOnConfig::new(d, c).init::<B>(&Default::default());
        let (src, pos) = (feats::<B>(b, d, h, w, 1), feats::<B>(b * p, d, h, w, 2));
        let ys: Vec<i64> = (0..b as i64).map(|i| (i * 3) % c as i64).collect();
        let yp: Vec<i64> = ys.iter().flat_map(|&y| vec![y; p]).collect();
        let out = addon.forward(src.clone(), pos.clone(), labels(&ys), labels(&yp), |x| x);
        let n = b * (1 + p);
        assert_eq!(out.mu.dims(), [b, h, w]);
        assert_eq!(out.beta.dims(), [n, 1, h, w]);
        assert_eq!(out.logits.dims(), [n, c]);
        // μ is the correlation mask of the sources.
        let mu = values(out.mu.clone());
        assert_eq!(mu, values(correlation_mask(src, pos, p, MaskNorm::MinMax)));
        // L_μ over the sources' β only.
        let beta = values(out.beta.clone());
        let mse: f64 = (0..b * h * w).map(|i| (beta[i] as f64 - mu[i] as f64).powi(2)).sum::<f64>() / (b * h * w) as f64;
        assert!((scalar(out.loss_mu.clone()) - mse).abs() < 1e-6);
        // L_cls: −mean log softmax(logits/τ)[y] over sources then positives.
        let logits = values(out.logits.clone());
        let y: Vec<i64> = ys.iter().chain(&yp).copied().collect();
        let ce: f64 = (0..n)
            .map(|i| {
                let row: Vec<f64> = logits[i * c..(i + 1) * c].iter().map(|&l| l as f64 / 0.05).collect();
                let m = row.iter().cloned().fold(f64::MIN, f64::max);
                let lse = m + row.iter().map(|r| (r - m).exp()).sum::<f64>().ln();
                lse - row[y[i] as usize]
            })
            .sum::<f64>()
            / n as f64;
        let got = scalar(out.loss_cls.clone());
        assert!((got - ce).abs() < 1e-4 * ce.max(1.0), "{got} vs {ce}");
        let total = 0.05 * scalar(out.loss_mu) + 0.1 * got;
        assert!((scalar(out.loss) - total).abs() < 1e-5);
    }
    check(2, 2, 4, 3, 3, 5);
    check(1, 1, 3, 2, 2, 2);
    check(3, 4, 8, 4, 2, 7);
}

#[test]
fn rest_runs_once_on_all_explanation_maps() {
    // A "layer4" that doubles the channels; zeroing it leaves the classifier bias.
    fn check(b: usize, p: usize, d: usize, scale: f32) {
        let cfg = AddOnConfig::new(d, 4)
            .with_tap(Tap::Stage3)
            .with_classifier_channels(Some(2 * d));
        let addon = cfg.init::<B>(&Default::default());
        let calls = Cell::new(0);
        let rest = |x: Tensor<B, 4>| {
            calls.set(calls.get() + 1);
            assert_eq!(x.dims()[0], b * (1 + p));
            Tensor::cat(vec![x.clone(), x], 1).mul_scalar(scale)
        };
        let (src, pos) = (feats::<B>(b, d, 2, 2, 3), feats::<B>(b * p, d, 2, 2, 4));
        let yp = vec![0; b * p];
        let out = addon.forward(
            src.clone(),
            pos.clone(),
            labels(&vec![0; b]),
            labels(&yp),
            rest,
        );
        assert_eq!(calls.get(), 1);
        assert_eq!(out.logits.dims(), [b * (1 + p), 4]);
        let f = Tensor::cat(vec![src, pos], 0);
        let e = explanation(f, out.beta.clone());
        let want = addon.classifier.forward(global_avg_pool(
            Tensor::cat(vec![e.clone(), e], 1).mul_scalar(scale),
        ));
        let (g, w) = (values(out.logits), values(want));
        assert!(g.iter().zip(&w).all(|(a, b)| (a - b).abs() < 1e-5));
        if scale == 0.0 {
            let bias = values(addon.classifier.fc.bias.as_ref().unwrap().val());
            assert!(g.chunks(4).all(|row| row == &bias[..]));
        }
    }
    check(2, 3, 4, 1.0);
    check(1, 2, 3, 0.0);
}

#[test]
fn l_mu_gradient_flows_through_beta_not_mu() {
    let (b, p, d, h, w) = (2, 2, 5, 3, 3);
    let addon = AddOnConfig::new(d, 3).init::<AB>(&Default::default());
    let src = feats::<AB>(b, d, h, w, 5).require_grad();
    let pos = feats::<AB>(b * p, d, h, w, 6).require_grad();
    let out = addon.forward(
        src.clone(),
        pos.clone(),
        labels(&[0, 1]),
        labels(&[0, 0, 1, 1]),
        |x| x,
    );
    assert!(!out.mu.is_require_grad());
    let grads = out.loss_mu.backward();
    let conv_grad = addon
        .head
        .conv
        .weight
        .val()
        .grad(&grads)
        .expect("head conv weight gets a gradient");
    assert!(values(conv_grad).iter().any(|&g| g != 0.0));
    assert!(
        addon.classifier.fc.weight.val().grad(&grads).is_none(),
        "L_μ does not touch the classifier"
    );
    // Positives reach L_μ only through μ: no gradient (zeros at most, from the slice).
    if let Some(g) = pos.grad(&grads) {
        assert!(values(g).iter().all(|&x| x == 0.0));
    }
    // The sources' gradient equals the one with μ replaced by a constant of equal values.
    let g = values(src.grad(&grads).expect("sources get a gradient through β"));
    let src2 = feats::<AB>(b, d, h, w, 5).require_grad();
    let mu_const = Tensor::<AB, 3>::from_data(out.mu.to_data(), &Default::default());
    let beta2 = addon.head.forward(src2.clone()).reshape([b, h, w]);
    let grads2 = attention_mse(beta2, mu_const).backward();
    let g2 = values(src2.grad(&grads2).unwrap());
    assert!(g.iter().any(|&x| x != 0.0));
    assert!(
        g.iter().zip(&g2).all(|(a, b)| (a - b).abs() < 1e-7),
        "{g:?} vs {g2:?}"
    );
}

#[test]
fn l_cls_gradient_reaches_sources_positives_and_both_modules() {
    let addon = AddOnConfig::new(4, 3).init::<AB>(&Default::default());
    let src = feats::<AB>(1, 4, 2, 2, 7).require_grad();
    let pos = feats::<AB>(2, 4, 2, 2, 8).require_grad();
    let out = addon.forward(
        src.clone(),
        pos.clone(),
        labels(&[2]),
        labels(&[2, 2]),
        |x| x,
    );
    let grads = out.loss_cls.backward();
    let nonzero = |t: Option<Tensor<B, 4>>| values(t.unwrap()).iter().any(|&x| x != 0.0);
    assert!(nonzero(src.grad(&grads)) && nonzero(pos.grad(&grads)));
    assert!(addon.classifier.fc.weight.val().grad(&grads).is_some());
    assert!(addon.head.conv.weight.val().grad(&grads).is_some());
}

#[test]
#[rustfmt::skip]
fn config_and_parameters() {
    fn check(stages: [usize; 4], tap: Tap, c: usize, channels: usize, out: usize) {
        let cfg = AddOnConfig::for_backbone(stages, tap, c);
        assert_eq!((cfg.channels, cfg.classifier_channels), (channels, Some(out)));
        assert_eq!((cfg.tau_c, cfg.w1, cfg.w2, cfg.mask_norm), (0.05, 0.05, 0.1, MaskNorm::MinMax));
        // β conv D + 1, classifier D_out·C + C: nothing else.
        assert_eq!(cfg.init::<B>(&Default::default()).num_params(), channels + 1 + out * c + c);
    }
    check([256, 512, 1024, 2048], Tap::Last, 3000, 2048, 2048);
    check([256, 512, 1024, 2048], Tap::Stage3, 50, 1024, 2048);
    check([256, 512, 1024, 2048], Tap::Multi, 150, 3584, 3584);
    check([64, 128, 256, 512], Tap::Multi, 10, 896, 896);
}
