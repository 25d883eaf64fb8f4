//! The self-supervised engines as Burn modules: heads that take already-pooled backbone
//! features `[N, in_dim]`, so they are independent of the backbone.
//!
//! - [`swav`]: SwAV projection head (Linear → BN → ReLU → Linear, L2-normalised output),
//!   prototypes (a bias-free Linear whose prototype vectors are re-normalised before every
//!   step), prototype freezing for the first iterations, and the feature queue
//!   (Caron et al. 2020, §3 and `main_swav.py`; SPEC §3).
//! - [`simsiam`]: SimSiam projector (3 layers, BN on each, the last BN without affine) and
//!   predictor (Chen & He 2021, §3 and `simsiam/builder.py`).
//! - [`norm`]: the affine-free batch norm used by the SimSiam projector.
//!
//! The losses live in `sca-losses`; the optimiser in `sca-optim`.
//!
//! Multi-crop: SwAV runs its head once on all crops concatenated (one BN batch), then splits
//! the scores per crop (`scores.chunk(n_crops, 0)`); SimSiam runs its head once per view.

pub mod norm;
pub mod simsiam;
pub mod swav;

pub use norm::{BatchNormNoAffine, BatchNormNoAffineConfig};
pub use simsiam::{SimSiamHead, SimSiamHeadConfig};
pub use swav::{SwavHead, SwavHeadConfig, SwavQueue, SwavQueueData};

use burn::tensor::{backend::Backend, Tensor};

/// The SwAV loss value that signals collapse: `ln K`.
///
/// If every sample gets the same scores, Sinkhorn returns uniform codes `1/K` and the
/// prediction is uniform too, so the swapped-prediction loss is exactly `ln K`. A loss that
/// sits at this value (rather than falling below it) means the representation has
/// collapsed; the training loop should warn loudly.
pub fn collapse_threshold(k: usize) -> f64 {
    (k as f64).ln()
}

/// Row-wise L2 normalisation with PyTorch's `F.normalize` floor (1e-12).
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x.div(norm)
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
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(
            TensorData::new(flat, [rows.len(), rows[0].len()]),
            &Default::default(),
        )
    }

    /// Deterministic pseudo-random features (no RNG state shared between tests).
    pub fn features<Bk: Backend>(n: usize, d: usize, salt: u32) -> Tensor<Bk, 2> {
        let flat: Vec<f32> = (0..n * d)
            .map(|i| {
                let x = (i as u32)
                    .wrapping_mul(2654435761)
                    .wrapping_add(salt.wrapping_mul(40503));
                (x % 1000) as f32 / 500.0 - 1.0
            })
            .collect();
        Tensor::from_data(TensorData::new(flat, [n, d]), &Default::default())
    }

    pub fn vals<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
    }

    #[track_caller]
    pub fn assert_close(got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                ((*g as f64) - w).abs() <= tol,
                "element {i}: got {g}, want {w}; all {got:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn collapse_threshold_is_ln_k() {
        let check = |k, want: f64| assert!((collapse_threshold(k) - want).abs() < 1e-12);
        check(1, 0.0);
        check(3000, 8.006367567650246);
        check(50, 3.912023005428146);
    }

    #[test]
    fn l2_normalize_rows() {
        let x = t2::<B>(&[&[3.0, 4.0], &[0.0, 0.0], &[0.0, -2.0]]);
        assert_close(
            &vals(l2_normalize(x)),
            &[0.6, 0.8, 0.0, 0.0, 0.0, -1.0],
            1e-7,
        );
    }
}
