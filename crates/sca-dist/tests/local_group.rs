//! Replicas as threads of one process, through burn-collective's local all-reduce.

use std::sync::Mutex;

use burn::backend::flex::FlexDevice;
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use sca_dist::{group, GroupSpec, Replica, TrackedSum};

/// The collective server is per process: one group at a time.
static GROUP: Mutex<()> = Mutex::new(());

/// Runs `f(replica)` on `world` threads joined into one group; results in rank order.
fn on_replicas<T: Send + 'static>(world: usize, f: impl Fn(Replica) -> T + Send + Sync + Copy + 'static) -> Vec<T> {
    let _guard = GROUP.lock().unwrap_or_else(|e| e.into_inner());
    group::reset();
    let spec = GroupSpec::local(world);
    let handles: Vec<_> = (0..world)
        .map(|i| {
            let spec = spec.clone();
            std::thread::spawn(move || f(sca_dist::join(&spec, i).expect("join")))
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("replica thread")).collect()
}

#[test]
fn sums_gathers_and_assembles_across_three_replicas() {
    let out = on_replicas(3, |r| {
        let k = r.rank() as f32;
        let sum = r.sum_vec(vec![k, 10.0 * k, 1.0]);
        let max = r.max(5.0 - k);
        let gathered = r.gather(k * k);
        let range = r.shard(7);
        let part: Vec<f32> = range.clone().map(|i| i as f32 + 0.5).collect();
        let full = r.assemble(7, range, &part);
        let t = r.sum(Tensor::<Flex, 2>::from_data(TensorData::new(vec![k; 4], [2, 2]), &FlexDevice));
        (r.rank(), sum, max, gathered, full, sca_dist::to_vec(t), r.comm_totals().calls)
    });
    for (rank, (r, sum, max, gathered, full, t, calls)) in out.into_iter().enumerate() {
        assert_eq!(r, rank);
        assert_eq!(sum, vec![3.0, 30.0, 3.0]);
        assert_eq!(max, 5.0);
        assert_eq!(gathered, vec![0.0, 1.0, 4.0]);
        assert_eq!(full, vec![0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5]);
        assert_eq!(t, vec![3.0; 4]);
        assert_eq!(calls, 5, "max and gather are one call each");
    }
}

#[test]
fn tracked_sum_sends_every_replicas_gradient_back() {
    // Replica r: x_r = [r+1, r+2], y = x_0 + x_1, loss_r = Σ w_r ⊙ y with w_r = [r+1, 3r+1].
    // ∂(loss_0 + loss_1)/∂x_r = w_0 + w_1 = [1+2, 1+4] = [3, 5] on both replicas.
    type B = Autodiff<Flex>;
    let out = on_replicas(2, |r| {
        let k = r.rank() as f32;
        let x = Tensor::<B, 1>::from_data(TensorData::new(vec![k + 1.0, k + 2.0], [2]), &FlexDevice).require_grad();
        let y = B::tracked_sum(&r, x.clone());
        let w = Tensor::<B, 1>::from_data(TensorData::new(vec![k + 1.0, 3.0 * k + 1.0], [2]), &FlexDevice);
        let grads = (y.clone() * w).sum().backward();
        (sca_dist::to_vec(y.inner()), sca_dist::to_vec(x.grad(&grads).expect("x is tracked")))
    });
    for (y, grad) in out {
        assert_eq!(y, vec![3.0, 5.0]);
        assert_eq!(grad, vec![3.0, 5.0]);
    }
}
