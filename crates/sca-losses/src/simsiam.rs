//! SimSiam: symmetric negative cosine similarity with stop-gradient (Chen & He 2021, eq. 1-4).

use burn::tensor::{backend::Backend, Tensor};

/// Same floor as PyTorch's `F.cosine_similarity` (eps = 1e-8): a zero vector gives cosine 0.
const NORM_EPS: f64 = 1e-8;

/// `D(p, z) = −mean_b cos(p_b, z_b)` with `z` detached (the stop-gradient of SimSiam).
///
/// `p`, `z`: `[N, d]`. Returns `[1]`.
pub fn negative_cosine<B: Backend>(p: Tensor<B, 2>, z: Tensor<B, 2>) -> Tensor<B, 1> {
    let z = crate::stop_gradient(z);
    let pn = p.clone().square().sum_dim(1).sqrt().clamp_min(NORM_EPS);
    let zn = z.clone().square().sum_dim(1).sqrt().clamp_min(NORM_EPS);
    let cos = p.div(pn).mul(z.div(zn)).sum_dim(1); // [N, 1]
    cos.mean().neg()
}

/// The SimSiam loss `D(p1, stopgrad z2)/2 + D(p2, stopgrad z1)/2` (range −1 … 1).
pub fn simsiam_loss<B: Backend>(
    p1: Tensor<B, 2>,
    p2: Tensor<B, 2>,
    z1: Tensor<B, 2>,
    z2: Tensor<B, 2>,
) -> Tensor<B, 1> {
    (negative_cosine(p1, z2) + negative_cosine(p2, z1)).div_scalar(2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;

    fn check(p: &[&[f32]], z: &[&[f32]], want: f64) {
        let got = scalar(negative_cosine(t2::<B>(p), t2::<B>(z)));
        assert!((got - want).abs() < 1e-6, "D(p, z): got {got}, want {want}");
    }

    #[test]
    fn negative_cosine_cases() {
        check(&[&[1.0, 2.0, 3.0]], &[&[1.0, 2.0, 3.0]], -1.0); // identical
        check(&[&[1.0, 2.0, 3.0]], &[&[2.0, 4.0, 6.0]], -1.0); // scale-invariant
        check(&[&[1.0, 0.0]], &[&[0.0, 5.0]], 0.0); // orthogonal
        check(&[&[1.0, -1.0]], &[&[-3.0, 3.0]], 1.0); // opposite
        check(&[&[0.0, 0.0]], &[&[1.0, 0.0]], 0.0); // zero vector: cosine 0, no NaN
                                                    // mean over rows: cos = 1 and cos((3,4),(4,3)) = 24/25 → −(1 + 0.96)/2
        check(
            &[&[1.0, 0.0], &[3.0, 4.0]],
            &[&[2.0, 0.0], &[4.0, 3.0]],
            -0.98,
        );
    }

    #[test]
    fn symmetric_loss() {
        let a: &[&[f32]] = &[&[1.0, 0.0]];
        let b: &[&[f32]] = &[&[0.0, 1.0]];
        let c: &[&[f32]] = &[&[1.0, 1.0]];
        // D(a, b)/2 + D(c, a)/2 = 0/2 − (1/√2)/2
        let got = scalar(simsiam_loss(t2::<B>(a), t2(c), t2(a), t2(b)));
        assert!((got + 0.5 / 2f64.sqrt()).abs() < 1e-6, "got {got}");
    }

    #[test]
    fn stop_gradient_on_target() {
        let p = t2::<AB>(&[&[1.0, 0.0]]).require_grad();
        let z = t2::<AB>(&[&[1.0, 1.0]]).require_grad();
        let grads = negative_cosine(p.clone(), z.clone()).backward();
        assert!(
            z.grad(&grads).is_none(),
            "the target branch must get no gradient"
        );
        // d/dp −cos(p, z) at p = (1,0), ẑ = (1,1)/√2: −(ẑ − (p̂·ẑ) p̂)/‖p‖ = (0, −1/√2)
        let g = vec(p.grad(&grads).expect("p gets a gradient"));
        assert_close(&g, &[0.0, -1.0 / 2f64.sqrt()], 1e-6);
    }
}
