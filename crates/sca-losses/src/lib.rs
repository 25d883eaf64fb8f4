//! Loss functions of the method, as plain functions of tensors (no modules, no I/O).
//!
//! - [`swav`]: Sinkhorn-Knopp codes and the swapped-prediction loss of SwAV
//!   (Caron et al. 2020, eq. 1-3; code path of `facebookresearch/swav`, `main_swav.py`).
//! - [`simsiam`]: symmetric negative cosine with stop-gradient (Chen & He 2021, eq. 1-4).
//! - [`attention`]: `L_μ = mean (β − μ)²`, eq. 5 of the spatial cross-attention paper.
//! - [`pseudo_label`]: `L_cls`, cross-entropy of `softmax(c/τ)` at the k-means pseudo-label,
//!   eq. 6 of the paper (read as the log-softmax of `c/τ`, see SPEC §4.5).
//!
//! Every loss returns a `Tensor<B, 1>` of shape `[1]`. Inputs that must not receive a
//! gradient (Sinkhorn scores, SimSiam targets, the correlation mask μ) are detached here,
//! so a caller cannot forget the stop-gradient.

pub mod attention;
pub mod pseudo_label;
pub mod simsiam;
pub mod swav;

pub use attention::attention_mse;
pub use pseudo_label::pseudo_label_ce;
pub use simsiam::{negative_cosine, simsiam_loss};
pub use swav::{sinkhorn, swav_loss};

use burn::tensor::{backend::Backend, Tensor};

/// Stop-gradient: the value of `x` as a new untracked tensor.
///
/// Burn's `detach` cuts the graph but keeps the require-grad flag, so on an autodiff
/// backend the detached copy becomes a new leaf and the backward pass still walks the ops
/// computed from it (to no one's benefit). Clearing the flag makes everything downstream
/// untracked. On a backend without autodiff this is the identity.
pub fn stop_gradient<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.detach().set_require_grad(false)
}

#[cfg(test)]
pub(crate) mod test_util {
    use burn::backend::{flex::FlexDevice, Autodiff, Flex};
    use burn::tensor::{backend::Backend, Tensor, TensorData};

    pub type B = Flex;
    pub type AB = Autodiff<Flex>;

    pub fn dev() -> FlexDevice {
        FlexDevice
    }

    pub fn t2<Bk: Backend>(rows: &[&[f32]]) -> Tensor<Bk, 2> {
        let n = rows.len();
        let k = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(TensorData::new(flat, [n, k]), &Default::default())
    }

    pub fn vec<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
    }

    pub fn scalar<Bk: Backend>(t: Tensor<Bk, 1>) -> f64 {
        vec(t)[0] as f64
    }

    #[track_caller]
    pub fn assert_close(got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "length: got {got:?}, want {want:?}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                ((*g as f64) - w).abs() <= tol,
                "element {i}: got {g}, want {w} (tol {tol}); all: {got:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn stop_gradient_untracks() {
        let x = t2::<AB>(&[&[1.0, 2.0]]).require_grad();
        // Burn's detach alone keeps the flag; stop_gradient clears it.
        assert!(x.clone().detach().is_require_grad());
        let y = stop_gradient(x.clone());
        assert!(!y.is_require_grad());
        assert_eq!(vec(y.mul_scalar(2.0)), [2.0, 4.0]);
    }
}
