//! Data-parallel replicas: which replica this is (rank, world size) and element-wise sums
//! across all replicas, the one collective every distributed piece of the method is built on
//! (gradient averaging, synchronised batch norm, Sinkhorn sums, the memory bank, k-means,
//! KNN). The sums go through Burn's `burn-collective` ([`group`]): between threads of one
//! process, and between processes or machines through its WebSocket orchestrator.
//!
//! A [`Replica::single`] (world size 1) makes every operation the identity, so the
//! single-device code path is the distributed one with nothing to talk to.
//!
//! Values travel as host `f32`: the collective runs on the CPU backend whatever device the
//! model is on. For the CPU backend that costs nothing; for CUDA it adds a device→host→device
//! copy per call (see docs/SCALING.md).

pub mod group;
pub mod sync_bn;
pub mod tracked;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

pub use group::{join, GroupSpec, JoinError};
pub use tracked::TrackedSum;

/// Element-wise sum of equally long vectors over all replicas of a group. Every replica
/// must call it the same number of times, in the same order, with the same lengths, and
/// every replica receives the same result (bit for bit).
pub trait Comm: Send + Sync {
    fn sum(&self, values: Vec<f32>) -> Vec<f32>;
}

/// Time and volume spent in collectives, for the benchmark.
#[derive(Debug, Default)]
pub struct CommStats {
    calls: AtomicU64,
    floats: AtomicU64,
    nanos: AtomicU64,
}

/// A snapshot of [`CommStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommTotals {
    pub calls: u64,
    pub bytes: u64,
    pub seconds: f64,
}

impl std::ops::Sub for CommTotals {
    type Output = CommTotals;
    fn sub(self, o: CommTotals) -> CommTotals {
        CommTotals { calls: self.calls - o.calls, bytes: self.bytes - o.bytes, seconds: self.seconds - o.seconds }
    }
}

/// One replica's handle on its group. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Replica {
    rank: usize,
    world: usize,
    comm: Option<Arc<dyn Comm>>,
    stats: Arc<CommStats>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Replica({}/{})", self.rank, self.world)
    }
}

impl Default for Replica {
    fn default() -> Self {
        Self::single()
    }
}

impl Replica {
    /// The only replica: every collective is the identity.
    pub fn single() -> Self {
        Self { rank: 0, world: 1, comm: None, stats: Arc::default() }
    }

    /// Replica `rank` of `world`, summing through `comm`.
    pub fn new(rank: usize, world: usize, comm: Arc<dyn Comm>) -> Self {
        assert!(rank < world, "rank {rank} outside a world of {world}");
        Self { rank, world, comm: Some(comm), stats: Arc::default() }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    pub fn is_single(&self) -> bool {
        self.world == 1
    }

    /// Rank 0: the replica that writes files and talks to the user.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Element-wise sum over all replicas.
    pub fn sum_vec(&self, values: Vec<f32>) -> Vec<f32> {
        let Some(comm) = self.comm.as_ref().filter(|_| self.world > 1 && !values.is_empty()) else {
            return values;
        };
        let t0 = Instant::now();
        let n = values.len() as u64;
        let out = comm.sum(values);
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.stats.floats.fetch_add(n, Ordering::Relaxed);
        self.stats.nanos.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }

    /// Element-wise sum of a tensor over all replicas (same shape everywhere).
    pub fn sum<B: Backend, const D: usize>(&self, t: Tensor<B, D>) -> Tensor<B, D> {
        if self.is_single() {
            return t;
        }
        let (shape, device) = (t.shape(), t.device());
        let values = to_vec(t);
        let n = values.len();
        Tensor::<B, 1>::from_data(TensorData::new(self.sum_vec(values), [n]), &device).reshape(shape)
    }

    /// The largest of every replica's `value`.
    pub fn max(&self, value: f32) -> f32 {
        self.gather(value).into_iter().fold(f32::NEG_INFINITY, f32::max)
    }

    /// Every replica's `value`, in rank order.
    pub fn gather(&self, value: f32) -> Vec<f32> {
        let mut slots = vec![0.0; self.world];
        slots[self.rank] = value;
        self.sum_vec(slots)
    }

    /// Assembles a length-`len` vector of which this replica holds `part` at `range`
    /// (the ranges of all replicas are disjoint; uncovered entries read 0).
    pub fn assemble(&self, len: usize, range: Range<usize>, part: &[f32]) -> Vec<f32> {
        assert_eq!(range.len(), part.len(), "part does not fill its range");
        let mut full = vec![0.0; len];
        full[range].copy_from_slice(part);
        self.sum_vec(full)
    }

    /// This replica's contiguous share of `0..n` (shares differ in length by at most one).
    pub fn shard(&self, n: usize) -> Range<usize> {
        shard(n, self.rank, self.world)
    }

    /// Totals since the group was joined.
    pub fn comm_totals(&self) -> CommTotals {
        CommTotals {
            calls: self.stats.calls.load(Ordering::Relaxed),
            bytes: self.stats.floats.load(Ordering::Relaxed) * 4,
            seconds: self.stats.nanos.load(Ordering::Relaxed) as f64 * 1e-9,
        }
    }
}

/// Share `rank` of `0..n` split into `world` contiguous pieces.
pub fn shard(n: usize, rank: usize, world: usize) -> Range<usize> {
    (rank * n / world)..((rank + 1) * n / world)
}

/// A tensor's values as host `f32`.
pub fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().expect("converted to f32")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_everything_once() {
        for (n, world) in [(10, 3), (7, 7), (5, 8), (1024, 2)] {
            let mut seen = vec![0; n];
            for r in 0..world {
                for i in shard(n, r, world) {
                    seen[i] += 1;
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "n={n} world={world}");
        }
        assert_eq!(shard(10, 1, 3), 3..6);
    }

    #[test]
    fn single_replica_is_the_identity() {
        let r = Replica::single();
        assert_eq!(r.sum_vec(vec![1.0, 2.0]), vec![1.0, 2.0]);
        assert_eq!(r.max(3.5), 3.5);
        assert_eq!(r.assemble(4, 1..3, &[7.0, 8.0]), vec![0.0, 7.0, 8.0, 0.0]);
        assert_eq!(r.comm_totals().calls, 0);
    }
}
