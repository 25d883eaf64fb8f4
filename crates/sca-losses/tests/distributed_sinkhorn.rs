//! SwAV's codes over two replicas (threads joined through burn-collective) equal the
//! single-replica codes of the global batch, with and without a queue.

use burn::backend::flex::FlexDevice;
use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};
use sca_dist::{group, GroupSpec};
use sca_losses::swav::{sinkhorn, swav_loss};

type B = Flex;

fn close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}");
    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-5, "{what}: max error {err}");
}

#[test]
fn two_replicas_give_the_codes_and_loss_of_the_global_batch() {
    // 8 samples, 5 prototypes, scores spread over [-1, 1]; one queue of 4 rows per replica.
    let s0 = Tensor::<B, 2>::random([8, 5], Distribution::Uniform(-1.0, 1.0), &FlexDevice);
    let s1 = Tensor::<B, 2>::random([8, 5], Distribution::Uniform(-1.0, 1.0), &FlexDevice);
    let queues: Vec<Tensor<B, 2>> = (0..2).map(|_| Tensor::random([4, 5], Distribution::Uniform(-1.0, 1.0), &FlexDevice)).collect();
    let want_codes = sca_dist::to_vec(sinkhorn(s0.clone(), 0.05, 3));
    // Single replica with both replicas' queues in front of its batch, in the order the
    // distributed concatenation has them: [queue_r; batch_r] for r = 0, 1.
    let global_in = Tensor::cat(vec![queues[0].clone(), s0.clone().narrow(0, 0, 4), queues[1].clone(), s0.clone().narrow(0, 4, 4)], 0);
    let q = sinkhorn(global_in, 0.05, 3);
    let want_queue_codes = [sca_dist::to_vec(q.clone().narrow(0, 4, 4)), sca_dist::to_vec(q.narrow(0, 12, 4))].concat();
    let want_loss = sca_dist::to_vec(swav_loss(&[s0.clone(), s1.clone()], &[0], 0.1, 0.05, 3, None, &sca_dist::Replica::single()))[0];

    group::reset();
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let (s0, s1, queue) = (s0.clone().narrow(0, 4 * rank, 4), s1.clone().narrow(0, 4 * rank, 4), queues[rank].clone());
            std::thread::spawn(move || {
                let r = sca_dist::join(&GroupSpec::local(2), rank).unwrap();
                let codes = sca_dist::to_vec(sca_losses::swav::sinkhorn_across(s0.clone(), 0.05, 3, &r));
                let with_queue = Tensor::cat(vec![queue, s0.clone()], 0);
                let queue_codes = sca_dist::to_vec(sca_losses::swav::sinkhorn_across(with_queue, 0.05, 3, &r).narrow(0, 4, 4));
                let loss = sca_dist::to_vec(swav_loss(&[s0, s1], &[0], 0.1, 0.05, 3, None, &r))[0];
                (codes, queue_codes, loss)
            })
        })
        .collect();
    let out: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    close("codes", &[out[0].0.clone(), out[1].0.clone()].concat(), &want_codes);
    close("codes with queues", &[out[0].1.clone(), out[1].1.clone()].concat(), &want_queue_codes);
    // Each replica's loss is the mean over its half; their mean is the global loss.
    let mean = (out[0].2 + out[1].2) / 2.0;
    assert!((mean - want_loss).abs() <= 1e-5 * want_loss.abs(), "{mean} vs {want_loss}");
}
