//! The attention loss of the add-on: `L_μ = mean (β − μ)²` (eq. 5 of the paper).

use burn::tensor::{backend::Backend, Tensor};

/// Mean squared error between the attention mask β and the correlation mask μ, averaged
/// over every element (batch and the H×W positions).
///
/// μ is a target: it is detached here, even if the caller already did, so that no gradient
/// reaches the backbone through μ (SPEC §4.3); the gradient flows through β only.
pub fn attention_mse<B: Backend, const D: usize>(
    beta: Tensor<B, D>,
    mu: Tensor<B, D>,
) -> Tensor<B, 1> {
    assert_eq!(beta.dims(), mu.dims(), "β and μ must have the same shape");
    beta.sub(crate::stop_gradient(mu)).square().mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;

    fn check(beta: &[&[f32]], mu: &[&[f32]], want: f64) {
        let got = scalar(attention_mse(t2::<B>(beta), t2::<B>(mu)));
        assert!((got - want).abs() < 1e-6, "got {got}, want {want}");
    }

    #[test]
    fn mse_cases() {
        check(&[&[0.5, 0.5]], &[&[0.5, 0.5]], 0.0);
        // ((0.1)² + (0.3)² + (−0.2)² + 0²)/4 = (0.01 + 0.09 + 0.04)/4
        check(
            &[&[0.6, 0.3], &[0.2, 1.0]],
            &[&[0.5, 0.0], &[0.4, 1.0]],
            0.035,
        );
        check(&[&[1.0, 0.0, 1.0]], &[&[0.0, 1.0, 0.0]], 1.0);
    }

    #[test]
    fn works_on_4d_masks() {
        // [B=2, 1, 1, 2] masks; squared errors 1, 0, 0.25, 0.25 → mean 0.375
        let beta = t2::<B>(&[&[1.0, 0.5], &[0.5, 0.5]]).reshape([2, 1, 1, 2]);
        let mu = t2::<B>(&[&[0.0, 0.5], &[0.0, 1.0]]).reshape([2, 1, 1, 2]);
        let got = scalar(attention_mse(beta, mu));
        assert!((got - 0.375).abs() < 1e-6, "got {got}");
    }

    #[test]
    fn gradient_through_beta_only() {
        let beta = t2::<AB>(&[&[0.6, 0.3]]).require_grad();
        let mu = t2::<AB>(&[&[0.5, 0.0]]).require_grad();
        let grads = attention_mse(beta.clone(), mu.clone()).backward();
        assert!(mu.grad(&grads).is_none(), "μ is a target: no gradient");
        // d/dβ mean (β−μ)² = 2(β−μ)/n = (0.1, 0.3)
        assert_close(&vec(beta.grad(&grads).unwrap()), &[0.1, 0.3], 1e-6);
    }
}
