//! The fused LARS step (`sca_kernels::lars`, one or two kernel launches on CubeCL backends)
//! against the tensor-operation step on Flex, through `Lars::step` on both: wgpu over Mesa's
//! software Vulkan (lavapipe), the runtime the CUDA backend shares its CubeCL code with.
//! Skipped without Vulkan unless `SCA_REQUIRE_VULKAN` is set (CI sets it).

use burn::backend::Flex;
use burn::optim::SimpleOptimizer;
use burn::tensor::{Tensor, TensorData};
use sca_kernels::lars::{lars_step, LarsStep};
use sca_kernels::WgpuBackend as W;
use sca_optim::{LarsConfig, LarsState};

/// `n` values from a fixed pseudo-random sequence in `[-scale, scale)`.
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

/// `(p', buf')` of one `Lars::step` on backend `B`.
fn step<B: burn::tensor::backend::Backend, const D: usize>(cfg: &LarsConfig, lr: f64, p: &TensorData, g: &TensorData, buf: Option<&TensorData>, device: &B::Device) -> (Vec<f32>, Option<Vec<f32>>) {
    let t = |d: &TensorData| Tensor::<B, D>::from_data(d.clone(), device);
    let state = buf.map(|b| LarsState { momentum_buffer: t(b) });
    let (p, state) = cfg.build::<B>().step(lr, t(p), t(g), state);
    let v = |x: Tensor<B, D>| x.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    (v(p), state.map(|s| v(s.momentum_buffer)))
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    let err = got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 2e-6 * scale, "{what}: off by {err} (scale {scale})");
}

/// The optimiser settings compared, each with its learning rate.
fn configs() -> Vec<(&'static str, LarsConfig, f64)> {
    vec![
        ("SwAV LARC", LarsConfig::new(), 0.6),
        ("LARC, clip", LarsConfig::new().with_clip(true).with_weight_decay(1e-4), 0.6),
        ("LARC, clip, lr 0", LarsConfig::new().with_clip(true), 0.0),
        ("LARC, large trust (clip bites)", LarsConfig::new().with_clip(true).with_trust_coefficient(50.0), 0.01),
        ("LARC, no momentum", LarsConfig::new().with_momentum(0.0).with_weight_decay(1e-3), 0.3),
        ("SGD + weight decay", LarsConfig::sgd(0.9, 1e-4), 0.1),
        ("SGD, no decay, no momentum", LarsConfig::sgd(0.0, 0.0), 0.1),
    ]
}

#[test]
fn the_fused_step_matches_the_tensor_operations() {
    let Some(device) = sca_kernels::cubecl_test_device::<W>() else { return };
    // A 2-D weight larger than one cube's share (several cubes of partial norms) and than
    // one pass of the update kernel's cubes (each cube then steps several elements); one at
    // the size up to which the update kernel computes the norms itself (16 cubes, each
    // reading the whole parameter), and one under a cube (odd size).
    assert_eq!(sca_kernels::lars::INLINE_NORMS_MAX, 4096);
    for (shape, seed) in [([600, 500], 1), ([64, 64], 11), ([3, 97], 21)] {
        let n = shape[0] * shape[1];
        let p = TensorData::new(values(n, seed, 0.2), shape);
        let g = TensorData::new(values(n, seed + 1, 0.01), shape);
        let buf = TensorData::new(values(n, seed + 2, 0.005), shape);
        let zero = TensorData::new(vec![0.0f32; n], shape);
        for (name, cfg, lr) in &configs() {
            for (first, buf) in [("first step", None), ("with buffer", Some(&buf))] {
                for (which, p) in [("p", &p), ("p = 0 (LARC inactive)", &zero)] {
                    let what = format!("{shape:?}, {name}, {first}, {which}");
                    let want = step::<Flex, 2>(cfg, *lr, p, &g, buf, &Default::default());
                    let got = step::<W, 2>(cfg, *lr, p, &g, buf, &device);
                    assert_close(&format!("{what}: parameter"), &got.0, &want.0);
                    assert_eq!(got.1.is_some(), want.1.is_some(), "{what}: buffer kept");
                    if let (Some(gb), Some(wb)) = (&got.1, &want.1) {
                        assert_close(&format!("{what}: buffer"), gb, wb);
                    }
                }
            }
        }
    }
    // 1-D parameters excluded from adaptation and decay.
    let cfg = LarsConfig::new().with_exclude_bias_and_bn(true).with_weight_decay(0.1);
    let (p1, g1) = (TensorData::new(values(300, 4, 1.0), [300]), TensorData::new(values(300, 5, 0.1), [300]));
    let want = step::<Flex, 1>(&cfg, 0.5, &p1, &g1, None, &Default::default());
    let got = step::<W, 1>(&cfg, 0.5, &p1, &g1, None, &device);
    assert_close("excluded 1-D parameter", &got.0, &want.0);
}

/// The step on wgpu above ran the fused kernels, not the tensor-operation fallback.
#[test]
fn the_gpu_backend_takes_the_fused_path() {
    let Some(device) = sca_kernels::cubecl_test_device::<W>() else { return };
    let t = |v: Vec<f32>| Tensor::<W, 1>::from_data(TensorData::new(v, [4]), &device);
    let s = LarsStep { lr: 0.5, weight_decay: 0.0, momentum: 0.0, lars: false, trust_coefficient: 0.001, clip: false, eps: 1e-8 };
    let (p, buf) = lars_step(t(vec![1.0, 2.0, 3.0, 4.0]), t(vec![2.0, 2.0, 2.0, 2.0]), None, &s).unwrap_or_else(|_| panic!("no fused step on wgpu"));
    assert!(buf.is_none());
    assert_eq!(p.into_data().to_vec::<f32>().unwrap(), vec![0.0, 1.0, 2.0, 3.0]); // p − 0.5·g
    let flex = Tensor::<Flex, 1>::zeros([4], &Default::default());
    assert!(lars_step(flex.clone(), flex, None, &s).is_err(), "Flex keeps the tensor operations");
}
