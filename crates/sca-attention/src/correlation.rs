//! The correlation mask μ (eq. 3-4 of the paper).

use burn::config::Config;
use burn::tensor::{backend::Backend, Tensor};
use sca_kernels::gemm_matmul;

#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum MaskNorm {
    /// Per image, (μ − min) / (max − min); all zeros where max == min.
    MinMax,
    /// The raw mean correlation of eq. 4.
    None,
}

/// μ for a batch: `source` `[B, D, H, W]`, `positives` `[B·P, D, H', W']` source-major
/// (rows `b·P .. b·P + P` belong to source `b`). Returns `[B, H, W]`, detached.
pub fn correlation_mask<B: Backend>(
    source: Tensor<B, 4>,
    positives: Tensor<B, 4>,
    p: usize,
    norm: MaskNorm,
) -> Tensor<B, 3> {
    let [b, d, h, w] = source.dims();
    let [bp, dp, hp, wp] = positives.dims();
    assert!(p > 0 && bp == b * p, "positives {bp} != {b} sources × {p}");
    assert_eq!(d, dp, "source and positives must have the same channels");
    let (hw, hwp) = (h * w, hp * wp);
    // Detach first: nothing below joins the autodiff graph.
    let s = source
        .detach()
        .reshape([b, 1, d, hw])
        .swap_dims(2, 3)
        .repeat_dim(1, p)
        .reshape([b * p, hw, d]);
    let q = positives.detach().reshape([b * p, d, hwp]);
    // ρ for every (source position, positive) pair: best match over the positive's positions.
    let rho = gemm_matmul(s, q)
        .max_dim(2)
        .reshape([b, p, hw])
        .div_scalar(d as f64);
    let mu = rho.mean_dim(1).reshape([b, hw]);
    let mu = match norm {
        MaskNorm::None => mu,
        MaskNorm::MinMax => {
            let min = mu.clone().min_dim(1);
            let range = mu.clone().max_dim(1) - min.clone();
            // max == min: numerator is 0 too, so dividing by 1 gives the zeros we want.
            let range = range.clone().mask_fill(range.equal_elem(0.0), 1.0);
            (mu - min) / range
        }
    };
    mu.reshape([b, h, w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::TensorData;

    type B = Flex;

    /// Feature maps from per-position D-vectors: `maps[n][y][x] = vector`.
    fn features<Bk: Backend>(maps: &[Vec<Vec<Vec<f32>>>]) -> Tensor<Bk, 4> {
        let (n, h, w, d) = (
            maps.len(),
            maps[0].len(),
            maps[0][0].len(),
            maps[0][0][0].len(),
        );
        let mut v = vec![0.0; n * d * h * w];
        for (i, m) in maps.iter().enumerate() {
            for y in 0..h {
                for x in 0..w {
                    for c in 0..d {
                        v[((i * d + c) * h + y) * w + x] = m[y][x][c];
                    }
                }
            }
        }
        Tensor::from_data(TensorData::new(v, [n, d, h, w]), &Default::default())
    }

    /// 2×2 grid of 2-vectors, row-major positions.
    fn grid(p: [[f32; 2]; 4]) -> Vec<Vec<Vec<f32>>> {
        vec![
            vec![p[0].to_vec(), p[1].to_vec()],
            vec![p[2].to_vec(), p[3].to_vec()],
        ]
    }

    fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    fn check(
        source: [[f32; 2]; 4],
        positives: &[[[f32; 2]; 4]],
        norm: MaskNorm,
        expected: [f32; 4],
    ) {
        let s = features::<B>(&[grid(source)]);
        let q = features::<B>(&positives.iter().map(|&g| grid(g)).collect::<Vec<_>>());
        let got = values(correlation_mask(s, q, positives.len(), norm));
        assert!(
            got.iter().zip(expected).all(|(g, e)| (g - e).abs() < 1e-6),
            "{got:?} vs {expected:?}"
        );
    }

    // Source positions (2,0) (0,1) (0,0) (1,1). Positive A = (3,0) (0,1) (0,0) (−1,0):
    // best dots 6, 1, 0, 3 → ρ = /D=2 → (3, 0.5, 0, 1.5). Positive B = (0,2) then zeros:
    // best dots 0, 2, 0, 2 → ρ = (0, 1, 0, 1). μ(A, B) = (1.5, 0.75, 0, 1.25).
    const S: [[f32; 2]; 4] = [[2., 0.], [0., 1.], [0., 0.], [1., 1.]];
    const A: [[f32; 2]; 4] = [[3., 0.], [0., 1.], [0., 0.], [-1., 0.]];
    const PB: [[f32; 2]; 4] = [[0., 2.], [0., 0.], [0., 0.], [0., 0.]];

    #[test]
    #[rustfmt::skip]
    fn hand_computed_masks() {
        check(S, &[A], MaskNorm::None, [3.0, 0.5, 0.0, 1.5]);
        check(S, &[A], MaskNorm::MinMax, [1.0, 1.0 / 6.0, 0.0, 0.5]);
        check(S, &[A, PB], MaskNorm::None, [1.5, 0.75, 0.0, 1.25]);
        check(S, &[A, PB], MaskNorm::MinMax, [1.0, 0.5, 0.0, 5.0 / 6.0]);
        // Constant μ (max == min): zeros, not NaN.
        check([[1., 0.]; 4], &[[[1., 0.]; 4]], MaskNorm::MinMax, [0.0; 4]);
        check([[1., 0.]; 4], &[[[1., 0.]; 4]], MaskNorm::None, [0.5; 4]);
    }

    #[test]
    fn shared_pattern_peaks_at_its_position() {
        // D = 6, 3×3 maps. A distinctive vector 4·e0 sits at a known source position and
        // somewhere in each positive; other positions hold 0.1 on channels 1..5.
        fn check(at: (usize, usize), in_positives: &[(usize, usize)]) {
            let map = |peak: (usize, usize), shift: usize| -> Vec<Vec<Vec<f32>>> {
                (0..3)
                    .map(|y| {
                        (0..3)
                            .map(|x| {
                                let mut v = vec![0.0; 6];
                                if (y, x) == peak {
                                    v[0] = 4.0;
                                } else {
                                    v[1 + (y * 3 + x + shift) % 5] = 0.1;
                                }
                                v
                            })
                            .collect()
                    })
                    .collect()
            };
            let s = features::<B>(&[map(at, 0)]);
            let q: Vec<_> = in_positives
                .iter()
                .enumerate()
                .map(|(k, &pk)| map(pk, k + 1))
                .collect();
            let mu = values(correlation_mask(
                s,
                features::<B>(&q),
                q.len(),
                MaskNorm::MinMax,
            ));
            let peak = at.0 * 3 + at.1;
            assert_eq!(mu[peak], 1.0, "{mu:?}");
            assert!(
                mu.iter()
                    .enumerate()
                    .all(|(i, &m)| i == peak || (0.0..0.01).contains(&m)),
                "{mu:?}"
            );
        }
        check((1, 2), &[(0, 0), (2, 2), (1, 1)]);
        check((0, 0), &[(0, 0)]);
        check((2, 1), &[(1, 0), (0, 2)]);
    }

    #[test]
    #[rustfmt::skip]
    fn batched_equals_naive_loops() {
        fn check(b: usize, p: usize, d: usize, (h, w): (usize, usize), (hp, wp): (usize, usize), norm: MaskNorm) {
            // Deterministic pseudo-random values in [-1, 1).
            let gen = |n: usize, salt: u64| -> Vec<f32> {
                (0..n as u64)
                    .map(|i| {
                        let x = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(salt).rotate_left(17);
                        (x % 2000) as f32 / 1000.0 - 1.0
                    })
                    .collect()
            };
            let sv = gen(b * d * h * w, 1);
            let qv = gen(b * p * d * hp * wp, 2);
            let s = Tensor::<B, 4>::from_data(TensorData::new(sv.clone(), [b, d, h, w]), &Default::default());
            let q = Tensor::<B, 4>::from_data(TensorData::new(qv.clone(), [b * p, d, hp, wp]), &Default::default());
            let got = values(correlation_mask(s, q, p, norm));
            for bi in 0..b {
                let mut mu = vec![0.0f32; h * w];
                for (ij, m) in mu.iter_mut().enumerate() {
                    for pi in 0..p {
                        let mut best = f32::NEG_INFINITY;
                        for ij2 in 0..hp * wp {
                            let dot: f32 = (0..d)
                                .map(|c| sv[(bi * d + c) * h * w + ij] * qv[((bi * p + pi) * d + c) * hp * wp + ij2])
                                .sum();
                            best = best.max(dot / d as f32);
                        }
                        *m += best / p as f32;
                    }
                }
                if norm == MaskNorm::MinMax {
                    let (lo, hi) = mu.iter().fold((f32::MAX, f32::MIN), |(l, u), &x| (l.min(x), u.max(x)));
                    mu.iter_mut().for_each(|x| *x = (*x - lo) / (hi - lo));
                }
                let g = &got[bi * h * w..(bi + 1) * h * w];
                assert!(g.iter().zip(&mu).all(|(a, e)| (a - e).abs() < 1e-5), "{g:?} vs {mu:?}");
            }
        }
        check(2, 3, 5, (3, 4), (3, 4), MaskNorm::None);
        check(2, 3, 5, (3, 4), (3, 4), MaskNorm::MinMax);
        check(3, 1, 7, (2, 2), (4, 3), MaskNorm::MinMax); // positives on another grid
        check(1, 4, 16, (5, 5), (5, 5), MaskNorm::MinMax);
    }

    #[test]
    fn mask_carries_no_gradient() {
        type AB = Autodiff<Flex>;
        let s = features::<AB>(&[grid(S)]).require_grad();
        let q = features::<AB>(&[grid(A)]).require_grad();
        let mu = correlation_mask(s.clone(), q.clone(), 1, MaskNorm::MinMax);
        assert!(!mu.is_require_grad());
        // Mixing μ into a loss with a tracked tensor still gives μ's inputs no gradient.
        let grads = (mu.reshape([1, 1, 2, 2]) * s.clone()).sum().backward();
        assert!(q.grad(&grads).is_none());
        let gs: Vec<f32> = s.grad(&grads).unwrap().into_data().iter::<f32>().collect();
        // d/ds Σ μ·s = μ broadcast over both channels: (1, 1/6, 0, 0.5) twice.
        let want = [1.0, 1.0 / 6.0, 0.0, 0.5, 1.0, 1.0 / 6.0, 0.0, 0.5];
        assert!(
            gs.iter().zip(want).all(|(g, e)| (g - e).abs() < 1e-6),
            "{gs:?}"
        );
    }
}
