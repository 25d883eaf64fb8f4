//! SwAV: Sinkhorn-Knopp codes and the swapped-prediction loss.
//!
//! Follows `distributed_sinkhorn` and the loss loop of `main_swav.py` in
//! facebookresearch/swav, including its data-parallel form: with several replicas the
//! Sinkhorn sums run over the global batch, so the codes equal the single-replica codes.

use burn::tensor::{activation::log_softmax, backend::Backend, ElementConversion, Tensor};
use sca_dist::Replica;

/// Soft codes Q from prototype scores by Sinkhorn-Knopp (SwAV eq. 3, `distributed_sinkhorn`).
///
/// `scores` is `[B, K]` (samples × prototypes). Returns `[B, K]` codes whose rows sum to 1
/// exactly and whose columns sum to about `B/K` (equipartition; exact only in the limit of
/// many iterations, since the last normalisation is over samples). No gradient: the input is
/// detached.
///
/// Steps, as SwAV: `Q = exp(scores/ε)ᵀ` (`K×B`), `Q /= ΣQ`; then `iterations` times: every
/// prototype row to total `1/K`, every sample column to total `1/B`; return `(B·Q)ᵀ`.
pub fn sinkhorn<B: Backend>(scores: Tensor<B, 2>, epsilon: f64, iterations: usize) -> Tensor<B, 2> {
    sinkhorn_across(scores, epsilon, iterations, &Replica::single())
}

/// [`sinkhorn`] over the global batch of all replicas, each holding `[B, K]` scores of its
/// share (equal shares): the total and the prototype (row) sums are added up over replicas,
/// as in SwAV's `distributed_sinkhorn`; sample (column) sums are local. Returns this
/// replica's rows of the global codes.
pub fn sinkhorn_across<B: Backend>(scores: Tensor<B, 2>, epsilon: f64, iterations: usize, replica: &Replica) -> Tensor<B, 2> {
    let [local, k] = scores.dims();
    let n = local * replica.world();
    let scores = crate::stop_gradient(scores);
    // Subtracting the global max only rescales exp(·) by one constant, which the division
    // by the total sum below removes exactly; it keeps exp(s/ε) finite in f32 (ε = 0.05
    // already gives e^20 for a score of 1). Replicas must subtract the same constant.
    let max = match replica.is_single() {
        true => scores.clone().max().reshape([1, 1]),
        false => {
            let local_max = scores.clone().max().into_scalar().elem::<f32>();
            Tensor::<B, 2>::full([1, 1], replica.max(local_max), &scores.device())
        }
    };
    let mut q = scores.sub(max).div_scalar(epsilon).exp().transpose(); // [K, B]
    let total = replica.sum(q.clone().sum().reshape([1, 1]));
    q = q.div(total);
    for _ in 0..iterations {
        // Each prototype (row) gets total mass 1/K.
        let rows = replica.sum(q.clone().sum_dim(1)); // [K, 1]
        q = q.div(rows).div_scalar(k as f64);
        // Each sample (column) gets total mass 1/B.
        let cols = q.clone().sum_dim(0); // [1, B]
        q = q.div(cols).div_scalar(n as f64);
    }
    q.mul_scalar(n as f64).transpose()
}

/// The SwAV swapped-prediction loss over multi-crop scores.
///
/// - `scores_per_crop[v]`: `[N, K]` scores `z_v · Cᵀ` of crop `v` (normalised z and prototypes).
/// - `assignment_crops`: crops whose codes are predicted (SwAV: `[0, 1]`).
/// - `temperature`: τ of the prediction softmax (0.1).
/// - `epsilon`, `iterations`: Sinkhorn parameters (0.05, 3).
/// - `replica`: this replica of the data-parallel group ([`Replica::single`] alone); the
///   loss is the mean over this replica's samples.
/// - `queue_scores`: when the queue is in use, `queue_scores[i]` (`[L, K]`, the queue of
///   assignment crop `i` scored against the current prototypes) is prepended to the Sinkhorn
///   input of `assignment_crops[i]`; only the last `N` rows (the batch) of the codes are kept.
///
/// Loss = mean over assignment crops `a` of `1/(V−1) Σ_{v≠a} −mean_b Σ_k q_a · log_softmax(s_v/τ)`.
/// Uniform scores give exactly `ln K` (see `sca_engine::collapse_threshold`).
pub fn swav_loss<B: Backend>(
    scores_per_crop: &[Tensor<B, 2>],
    assignment_crops: &[usize],
    temperature: f64,
    epsilon: f64,
    iterations: usize,
    queue_scores: Option<&[Tensor<B, 2>]>,
    replica: &Replica,
) -> Tensor<B, 1> {
    let n_crops = scores_per_crop.len();
    assert!(n_crops >= 2, "SwAV needs at least two crops, got {n_crops}");
    assert!(
        !assignment_crops.is_empty(),
        "SwAV needs at least one assignment crop"
    );
    if let Some(queue) = queue_scores {
        assert_eq!(
            queue.len(),
            assignment_crops.len(),
            "one queue per assignment crop"
        );
    }
    // log_softmax of every crop once; each is reused by every assignment crop.
    let log_p: Vec<Tensor<B, 2>> = scores_per_crop
        .iter()
        .map(|s| log_softmax(s.clone().div_scalar(temperature), 1))
        .collect();

    let mut total: Option<Tensor<B, 1>> = None;
    for (i, &a) in assignment_crops.iter().enumerate() {
        assert!(
            a < n_crops,
            "assignment crop {a} out of range ({n_crops} crops)"
        );
        let batch = scores_per_crop[a].dims()[0];
        let q = match queue_scores {
            Some(queue) => {
                let input = Tensor::cat(vec![queue[i].clone(), scores_per_crop[a].clone()], 0);
                let rows = input.dims()[0];
                sinkhorn_across(input, epsilon, iterations, replica).narrow(0, rows - batch, batch)
            }
            None => sinkhorn_across(scores_per_crop[a].clone(), epsilon, iterations, replica),
        };
        let mut sub: Option<Tensor<B, 1>> = None;
        for (v, lp) in log_p.iter().enumerate() {
            if v == a {
                continue;
            }
            let ce = q.clone().mul(lp.clone()).sum_dim(1).mean().neg();
            sub = Some(match sub {
                Some(s) => s + ce,
                None => ce,
            });
        }
        let sub = sub
            .expect("at least one other crop")
            .div_scalar((n_crops - 1) as f64);
        total = Some(match total {
            Some(t) => t + sub,
            None => sub,
        });
    }
    total
        .expect("at least one assignment crop")
        .div_scalar(assignment_crops.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;

    fn check_sinkhorn(scores: &[&[f32]], eps: f64, iters: usize, want: &[f64]) {
        let got = vec(sinkhorn(t2::<B>(scores), eps, iters));
        assert_close(&got, want, 1e-5);
    }

    /// Row sums (samples) and column sums (prototypes) of the codes.
    fn sums(scores: &[&[f32]], eps: f64, iters: usize) -> (Vec<f32>, Vec<f32>) {
        let q = sinkhorn(t2::<B>(scores), eps, iters);
        (vec(q.clone().sum_dim(1)), vec(q.sum_dim(0)))
    }

    #[test]
    fn sinkhorn_hand_cases() {
        // exp(s/ε) = [[1,2],[3,4]] (ε = 0.5). Q = [[1,3],[2,4]]/10 (K×B).
        // Rows to 1/K: [[1/8, 3/8], [1/6, 1/3]]. Columns to 1/B: col 0 = (1/8, 1/6)/(7/24)/2
        // = (3/14, 4/14); col 1 = (3/8, 1/3)/(17/24)/2 = (9/34, 8/34). ×B, transpose:
        let half_ln = |x: f32| 0.5 * x.ln();
        check_sinkhorn(
            &[&[half_ln(1.0), half_ln(2.0)], &[half_ln(3.0), half_ln(4.0)]],
            0.5,
            1,
            &[3.0 / 7.0, 4.0 / 7.0, 9.0 / 17.0, 8.0 / 17.0],
        );
        // Zero iterations: Q = exp(s/ε)/ΣQ · B, i.e. [[1,2],[3,4]]/10·2.
        check_sinkhorn(
            &[&[half_ln(1.0), half_ln(2.0)], &[half_ln(3.0), half_ln(4.0)]],
            0.5,
            0,
            &[0.2, 0.4, 0.6, 0.8],
        );
        // Equal scores: uniform codes 1/K whatever ε and the iteration count.
        check_sinkhorn(
            &[&[0.3, 0.3, 0.3], &[0.3, 0.3, 0.3]],
            0.05,
            3,
            &[1.0 / 3.0; 6],
        );
        // 2×3, ε = 0.05, 3 iterations; numbers from numpy running SwAV's loop verbatim:
        //   Q = exp(s/ε).T; Q /= Q.sum(); 3×{Q /= Q.sum(1)[:,None]; Q /= K;
        //   Q /= Q.sum(0)[None]; Q /= B}; (Q·B).T
        check_sinkhorn(
            &[&[0.9, 0.1, -0.2], &[0.3, 0.8, 0.0]],
            0.05,
            3,
            &[
                9.4032366683e-01,
                2.8927359270e-06,
                5.9673440434e-02,
                8.5759976475e-07,
                5.1638379538e-01,
                4.8361534702e-01,
            ],
        );
        // Scores of 30/ε = 600 would overflow exp in f32 without the max shift.
        check_sinkhorn(&[&[30.0, 30.0], &[30.0, 30.0]], 0.05, 3, &[0.5; 4]);
    }

    #[test]
    fn sinkhorn_marginals() {
        // Rows (samples) always sum to 1 exactly; columns reach B/K as iterations grow.
        let s: &[&[f32]] = &[&[0.9, 0.1], &[0.8, 0.2], &[0.7, -0.1], &[0.0, 0.3]];
        let (rows, cols) = sums(s, 0.5, 3);
        assert_close(&rows, &[1.0; 4], 1e-6);
        assert_close(&cols, &[2.0, 2.0], 1e-2); // B/K = 4/2
        let (rows, cols) = sums(s, 0.5, 50);
        assert_close(&rows, &[1.0; 4], 1e-6);
        assert_close(&cols, &[2.0, 2.0], 1e-5);
    }

    fn check_loss(crops: &[&[&[f32]]], assign: &[usize], queue: Option<&[&[&[f32]]]>, want: f64) {
        let scores: Vec<Tensor<B, 2>> = crops.iter().map(|c| t2(c)).collect();
        let queue: Option<Vec<Tensor<B, 2>>> = queue.map(|q| q.iter().map(|c| t2(c)).collect());
        let loss = swav_loss(&scores, assign, 0.1, 0.05, 3, queue.as_deref(), &Replica::single());
        assert_close(&vec(loss), &[want], 1e-4);
    }

    const S0: &[&[f32]] = &[&[0.9, 0.1, -0.2], &[0.3, 0.8, 0.0]];
    const S1: &[&[f32]] = &[&[0.2, 0.7, 0.1], &[-0.5, 0.4, 0.6]];
    const S2: &[&[f32]] = &[&[0.0, -0.3, 0.5], &[0.1, 0.2, 0.3]];

    #[test]
    fn swav_loss_cases() {
        // Uniform scores: q = 1/K and log_softmax = −ln K, so the loss is ln K exactly.
        let u3: &[&[f32]] = &[&[0.2, 0.2, 0.2], &[0.2, 0.2, 0.2]];
        check_loss(&[u3, u3], &[0, 1], None, 3f64.ln());
        let u5: &[&[f32]] = &[&[0.0; 5], &[0.0; 5], &[0.0; 5]];
        check_loss(&[u5, u5, u5, u5], &[0, 1], None, 5f64.ln());
        check_loss(&[u5, u5, u5], &[0], None, 5f64.ln());
        // numpy, SwAV loop verbatim (q = sinkhorn(s_a, .05, 3);
        // loss = mean_a [ Σ_{v≠a} −mean_b Σ_k q·log_softmax(s_v/.1) ] / (V−1)):
        check_loss(&[S0, S1], &[0, 1], None, 4.534881800722654);
        check_loss(&[S0, S1, S2], &[0, 1], None, 3.8361417141230407);
        // Queues of 2 rows prepended to the Sinkhorn input; codes of the last 2 rows used.
        let q0: &[&[f32]] = &[&[0.5, 0.5, -0.1], &[0.0, 0.1, 0.9]];
        let q1: &[&[f32]] = &[&[-0.2, 0.3, 0.3], &[0.7, 0.0, 0.2]];
        check_loss(&[S0, S1], &[0, 1], Some(&[q0, q1]), 5.773234226612604);
    }

    #[test]
    fn swav_gradient_reaches_predictions_only_through_log_softmax() {
        // d loss / d s_v = (softmax(s_v/τ) − q)/(τ·N) per crop (q constant). With uniform
        // scores q = softmax = 1/K, so the gradient vanishes: nothing flows through q.
        let s0 = t2::<AB>(&[&[0.2, 0.2], &[0.2, 0.2]]).require_grad();
        let s1 = t2::<AB>(&[&[0.2, 0.2], &[0.2, 0.2]]).require_grad();
        let loss = swav_loss(&[s0.clone(), s1.clone()], &[0], 0.1, 0.05, 3, None, &Replica::single());
        let grads = loss.backward();
        // s0 is only the Sinkhorn input of crop 0 here: no gradient at all.
        assert!(s0.grad(&grads).is_none());
        assert_close(&vec(s1.grad(&grads).unwrap()), &[0.0; 4], 1e-6);

        // Non-uniform prediction: q from s0 = [[1,0]]-ish, gradient on s1 is
        // (softmax(s1/τ) − q)/(τ·N) with N = 1, softmax([0,0]) = [.5,.5].
        let s0 = t2::<AB>(&[&[1.0, 0.0]]);
        let s1 = t2::<AB>(&[&[0.0, 0.0]]).require_grad();
        let loss = swav_loss(&[s0, s1.clone()], &[0], 0.1, 0.05, 0, None, &Replica::single());
        // 0 iterations: q = exp(s/ε)/Σ = [e^20, 1]/(e^20+1) ≈ [1 − 2.06e-9, 2.06e-9]
        let grads = loss.backward();
        assert_close(
            &vec(s1.grad(&grads).unwrap()),
            &[(0.5 - 1.0) / 0.1, 0.5 / 0.1],
            1e-4,
        );
    }
}
