//! The cluster-classifier loss of the add-on: cross-entropy of `softmax(c/τ)` at the k-means
//! pseudo-label (eq. 6 of the paper, τ_c = 0.05).

use burn::tensor::{activation::log_softmax, backend::Backend, Int, Tensor};

/// `−mean_i log softmax(logits_i / τ)[label_i]`.
///
/// `logits`: `[N, C]`; `labels`: `[N]` cluster ids in `0..C`. Returns `[1]`.
pub fn pseudo_label_ce<B: Backend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
    tau: f64,
) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    assert_eq!(labels.dims()[0], n, "one label per row");
    let log_p = log_softmax(logits.div_scalar(tau), 1);
    log_p.gather(1, labels.reshape([n, 1])).mean().neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use burn::tensor::TensorData;

    fn check(logits: &[&[f32]], labels: &[i64], tau: f64, want: f64) {
        let labels = Tensor::<B, 1, Int>::from_data(TensorData::from(labels), &dev());
        let got = scalar(pseudo_label_ce(t2::<B>(logits), labels, tau));
        assert!((got - want).abs() < 1e-5, "got {got}, want {want}");
    }

    #[test]
    fn ce_cases() {
        // Equal logits: −log(1/C) whatever τ.
        check(&[&[0.3, 0.3, 0.3, 0.3]], &[2], 0.05, 4f64.ln());
        // τ = 1: logits (0, ln 3) → p = (1/4, 3/4); label 1 → −ln(3/4)
        check(&[&[0.0, 3f32.ln()]], &[1], 1.0, -(0.75f64).ln());
        // τ = 0.05: logits (0, 0.05) → scaled (0, 1) → −log σ(1) = ln(1 + e^−1) at label 1,
        // ln(1 + e) at label 0; the mean of both rows:
        let a = (1.0 + (-1f64).exp()).ln();
        let b = (1.0 + 1f64.exp()).ln();
        check(&[&[0.0, 0.05], &[0.0, 0.05]], &[1, 0], 0.05, (a + b) / 2.0);
    }

    #[test]
    fn gradient_is_softmax_minus_onehot() {
        // d/dc CE(c/τ) = (softmax(c/τ) − onehot)/τ/N; τ = 1, c = (0, ln 3), y = 1, N = 1
        let logits = t2::<AB>(&[&[0.0, 3f32.ln()]]).require_grad();
        let labels = Tensor::<AB, 1, Int>::from_data(TensorData::from([1i64]), &dev());
        let grads = pseudo_label_ce(logits.clone(), labels, 1.0).backward();
        assert_close(&vec(logits.grad(&grads).unwrap()), &[0.25, -0.25], 1e-6);
    }
}
