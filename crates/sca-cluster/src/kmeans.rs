//! k-means on the device: chunked assignment by matmul, scatter-add updates.

use burn::config::Config;
use burn::tensor::{
    backend::Backend, ElementConversion, IndexingUpdateOp, Int, Tensor, TensorData,
};
use rand::{seq::index, Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sca_dist::Replica;
// The assignment's matmuls on an explicit kernel: on CUDA, Burn's autotuned matmul compiles
// and times about thirty candidates per shape key (and the last, shorter chunk is a new key).
use sca_kernels::gemm_matmul;

/// Largest `rows × C` score matrix one assignment chunk may hold when
/// [`KMeansConfig::chunk_size`] is `None`: 4 Mi floats = 16 MiB. On the 2-core CPU,
/// chunks of 2-4k rows at C = 1000 ran a pass 1.8× faster than 16k-row chunks.
pub const DEFAULT_CHUNK_ELEMS: usize = 1 << 22;

#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum KMeansInit {
    /// k-means++ (D² sampling), on a seeded subset when N is large.
    PlusPlus,
    /// C distinct points drawn uniformly.
    Random,
}

#[derive(Config, Debug, PartialEq, Eq, Copy)]
pub enum Metric {
    /// Spherical k-means: maximise ⟨x, c⟩ with unit-norm centroids (rows assumed unit-norm).
    Cosine,
    /// Minimise ‖x − c‖² with mean centroids.
    Euclidean,
}

#[derive(Config, Debug)]
pub struct KMeansConfig {
    pub clusters: usize,
    /// Lloyd updates at most (each followed by an assignment pass).
    #[config(default = 10)]
    pub iterations: usize,
    /// Stop once Σ_c ‖c_new − c_old‖² ≤ tolerance. `None`: run the full budget
    /// (still stopping at a fixed point, where nothing can change any more).
    #[config(default = "None")]
    pub tolerance: Option<f64>,
    #[config(default = "KMeansInit::PlusPlus")]
    pub init: KMeansInit,
    #[config(default = "Metric::Cosine")]
    pub metric: Metric,
    #[config(default = 0)]
    pub seed: u64,
    /// Rows per assignment chunk. `None`: `max(1, DEFAULT_CHUNK_ELEMS / C)`.
    #[config(default = "None")]
    pub chunk_size: Option<usize>,
    /// k-means++ draws its centres from a seeded uniform subset of this many points
    /// when N is larger (its cost is C passes over the candidates).
    #[config(default = 100_000)]
    pub plus_plus_candidates: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KMeansError {
    #[error("need 1 <= clusters <= points, got {clusters} clusters for {points} points")]
    BadClusterCount { clusters: usize, points: usize },
    #[error("initial centroids are {got:?}, expected [{clusters}, {dim}]")]
    BadCentroids {
        got: [usize; 2],
        clusters: usize,
        dim: usize,
    },
}

#[derive(Debug, Clone)]
pub struct KMeansResult<B: Backend> {
    /// Cluster of every row: the nearest of `centroids`.
    pub assignments: Vec<u32>,
    /// `[C, d]`; unit rows for `Cosine`.
    pub centroids: Tensor<B, 2>,
    pub sizes: Vec<usize>,
    /// Lloyd updates performed.
    pub iterations_run: usize,
    /// Stopped at a fixed point or by `tolerance` (possibly on the budget's last update).
    pub converged: bool,
    /// Σ over rows of the cost to the assigned centroid: ‖x − c‖² (Euclidean) or
    /// 1 − ⟨x, c⟩ (Cosine; equals ‖x − c‖²/2 for unit rows).
    pub inertia: f64,
    /// Empty clusters re-seeded over the whole run.
    pub reseeded: usize,
}

/// Nearest centroid of each row and its cost (see [`KMeansResult::inertia`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub labels: Vec<u32>,
    pub costs: Vec<f32>,
}

impl Assignment {
    pub fn inertia(&self) -> f64 {
        self.costs.iter().map(|&c| c as f64).sum()
    }
}

/// Cluster `z` (`[N, d]`, rows L2-normalised for `Cosine`) into `cfg.clusters` groups.
pub fn kmeans<B: Backend>(
    z: &Tensor<B, 2>,
    cfg: &KMeansConfig,
) -> Result<KMeansResult<B>, KMeansError> {
    kmeans_across(z, cfg, &Replica::single())
}

/// [`kmeans`] with the assignment work split over replicas that all hold the same `z`:
/// each assigns its [`Replica::shard`] of the rows, the per-cluster sums are added up over
/// replicas and the labels and costs gathered, so every replica ends with the same result
/// (equal to the single-replica one up to the order of the sums).
pub fn kmeans_across<B: Backend>(
    z: &Tensor<B, 2>,
    cfg: &KMeansConfig,
    replica: &Replica,
) -> Result<KMeansResult<B>, KMeansError> {
    let [n, _] = z.dims();
    check_count(cfg.clusters, n)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let centroids = match cfg.init {
        KMeansInit::Random => {
            let idx: Vec<usize> = index::sample(&mut rng, n, cfg.clusters).into_vec();
            z.clone().select(0, int_tensor::<B>(&idx, &z.device()))
        }
        KMeansInit::PlusPlus => plus_plus(z, cfg.clusters, cfg.plus_plus_candidates, &mut rng),
    };
    lloyd(z, centroids, cfg, replica)
}

/// Lloyd iterations from given centroids (e.g. last epoch's, for a warm start).
pub fn kmeans_from<B: Backend>(
    z: &Tensor<B, 2>,
    centroids: Tensor<B, 2>,
    cfg: &KMeansConfig,
) -> Result<KMeansResult<B>, KMeansError> {
    let [n, d] = z.dims();
    check_count(cfg.clusters, n)?;
    if centroids.dims() != [cfg.clusters, d] {
        return Err(KMeansError::BadCentroids {
            got: centroids.dims(),
            clusters: cfg.clusters,
            dim: d,
        });
    }
    lloyd(z, centroids, cfg, &Replica::single())
}

/// Nearest centroid of every row, `chunk_rows` rows at a time.
pub fn assign<B: Backend>(
    z: &Tensor<B, 2>,
    centroids: &Tensor<B, 2>,
    metric: Metric,
    chunk_rows: usize,
) -> Assignment {
    let norms = row_sq_norms(z, metric);
    let pass = pass(
        z,
        norms.as_ref(),
        centroids,
        metric,
        chunk_rows.max(1),
        false,
        &Replica::single(),
    );
    Assignment {
        labels: pass.labels,
        costs: pass.costs,
    }
}

fn check_count(clusters: usize, points: usize) -> Result<(), KMeansError> {
    if clusters == 0 || clusters > points {
        return Err(KMeansError::BadClusterCount { clusters, points });
    }
    Ok(())
}

fn chunk_rows(cfg: &KMeansConfig) -> usize {
    cfg.chunk_size
        .unwrap_or(DEFAULT_CHUNK_ELEMS / cfg.clusters)
        .max(1)
}

fn int_tensor<B: Backend>(v: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = v.iter().map(|&x| x as i64).collect();
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

/// ‖x‖² per row, `[N, 1]`, needed only for Euclidean costs.
fn row_sq_norms<B: Backend>(z: &Tensor<B, 2>, metric: Metric) -> Option<Tensor<B, 2>> {
    (metric == Metric::Euclidean).then(|| z.clone().square().sum_dim(1))
}

struct Pass<B: Backend> {
    labels: Vec<u32>,
    costs: Vec<f32>,
    /// Per-cluster sums of the rows assigned in this pass, `[C, d]`.
    sums: Option<Tensor<B, 2>>,
}

fn pass<B: Backend>(
    z: &Tensor<B, 2>,
    sq_norms: Option<&Tensor<B, 2>>,
    centroids: &Tensor<B, 2>,
    metric: Metric,
    rows: usize,
    accumulate: bool,
    replica: &Replica,
) -> Pass<B> {
    let [n_all, d] = z.dims();
    let mine = replica.shard(n_all);
    let (offset, n) = (mine.start, mine.end);
    let [c, _] = centroids.dims();
    let device = z.device();
    let ct = centroids.clone().transpose();
    // Euclidean: argmin ‖x−c‖² = argmax (2⟨x,c⟩ − ‖c‖²).
    let c_sq = (metric == Metric::Euclidean)
        .then(|| centroids.clone().square().sum_dim(1).reshape([1, c]));
    let mut sums = accumulate.then(|| Tensor::<B, 2>::zeros([c, d], &device));
    let (mut labels, mut costs) = (Vec::new(), Vec::new());
    let mut start = offset;
    while start < n {
        let end = (start + rows).min(n);
        let r = end - start;
        let x = z.clone().slice(start..end);
        let mut scores = gemm_matmul(x.clone(), ct.clone());
        if let Some(c_sq) = &c_sq {
            scores = scores.mul_scalar(2.0) - c_sq.clone();
        }
        let (best, idx) = scores.max_dim_with_indices(1);
        let cost = match sq_norms {
            Some(sq) => sq.clone().slice(start..end) - best,
            None => best.neg().add_scalar(1.0),
        };
        let idx = idx.reshape([r]);
        if let Some(s) = sums.take() {
            // Backends add the rows of one column in index order: deterministic.
            sums = Some(s.select_assign(0, idx.clone(), x, IndexingUpdateOp::Add));
        }
        labels.push(idx);
        costs.push(cost.clamp_min(0.0).reshape([r]));
        start = end;
    }
    // One read-back per pass, not per chunk.
    let (mut labels, mut costs): (Vec<u32>, Vec<f32>) = match labels.is_empty() {
        true => (Vec::new(), Vec::new()),
        false => (
            Tensor::cat(labels, 0).into_data().iter::<i64>().map(|v| v as u32).collect(),
            Tensor::cat(costs, 0).into_data().iter::<f32>().collect(),
        ),
    };
    if !replica.is_single() {
        // Every replica gets all labels and costs (labels < 2^24 are exact in f32).
        let l: Vec<f32> = labels.iter().map(|&v| v as f32).collect();
        labels = replica.assemble(n_all, mine.clone(), &l).into_iter().map(|v| v as u32).collect();
        costs = replica.assemble(n_all, mine, &costs);
        sums = sums.map(|s| replica.sum(s));
    }
    Pass {
        labels,
        costs,
        sums,
    }
}

fn lloyd<B: Backend>(
    z: &Tensor<B, 2>,
    mut centroids: Tensor<B, 2>,
    cfg: &KMeansConfig,
    replica: &Replica,
) -> Result<KMeansResult<B>, KMeansError> {
    let [_, d] = z.dims();
    let k = cfg.clusters;
    let device = z.device();
    let rows = chunk_rows(cfg);
    let norms = row_sq_norms(z, cfg.metric);
    let mut current = pass(
        z,
        norms.as_ref(),
        &centroids,
        cfg.metric,
        rows,
        cfg.iterations > 0,
        replica,
    );
    let (mut iterations_run, mut converged, mut reseeded) = (0, false, 0);
    while iterations_run < cfg.iterations {
        let mut counts = cluster_counts(&current.labels, k);
        let mut sums = current.sums.take().expect("accumulating pass");
        let moved = reseed_empty(&current.labels, &current.costs, &mut counts);
        if !moved.is_empty() {
            reseeded += moved.len();
            sums = apply_moves(z, sums, &moved, k, d);
        }
        let old = centroids;
        centroids = match cfg.metric {
            Metric::Euclidean => {
                let n: Vec<f32> = counts.iter().map(|&c| c.max(1) as f32).collect();
                sums / Tensor::<B, 1>::from_data(TensorData::new(n, [k]), &device).reshape([k, 1])
            }
            Metric::Cosine => crate::bank::l2_normalize(sums),
        };
        iterations_run += 1;
        let shift_small = cfg.tolerance.is_some_and(|tol| {
            let shift: f32 = (centroids.clone() - old)
                .square()
                .sum()
                .into_scalar()
                .elem();
            shift as f64 <= tol
        });
        let last = iterations_run == cfg.iterations || shift_small;
        let next = pass(z, norms.as_ref(), &centroids, cfg.metric, rows, !last, replica);
        let fixed = moved.is_empty() && next.labels == current.labels;
        current = next;
        if fixed || shift_small {
            converged = true;
            break;
        }
    }
    let inertia = current.costs.iter().map(|&c| c as f64).sum();
    Ok(KMeansResult {
        sizes: cluster_counts(&current.labels, k),
        assignments: current.labels,
        centroids,
        iterations_run,
        converged,
        inertia,
        reseeded,
    })
}

fn cluster_counts(labels: &[u32], k: usize) -> Vec<usize> {
    let mut counts = vec![0; k];
    for &l in labels {
        counts[l as usize] += 1;
    }
    counts
}

/// A point moved into an empty cluster: (row, from, to).
type Move = (usize, usize, usize);

/// Fill each empty cluster (in index order) with the farthest point (highest cost,
/// lower index on ties) whose cluster keeps at least one member. `counts` is updated.
fn reseed_empty(labels: &[u32], costs: &[f32], counts: &mut [usize]) -> Vec<Move> {
    let empty: Vec<usize> = (0..counts.len()).filter(|&c| counts[c] == 0).collect();
    if empty.is_empty() {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|&a, &b| costs[b].total_cmp(&costs[a]).then(a.cmp(&b)));
    let mut candidates = order.into_iter();
    let mut moves = Vec::with_capacity(empty.len());
    for to in empty {
        // Pigeonhole: with C <= N and an empty cluster, some cluster has >= 2 members.
        let row = candidates
            .by_ref()
            .find(|&i| counts[labels[i] as usize] > 1)
            .expect("a cluster with two members exists while one is empty");
        let from = labels[row] as usize;
        counts[from] -= 1;
        counts[to] = 1;
        moves.push((row, from, to));
    }
    moves
}

/// Move the rows' contributions between cluster sums (on the host: C×d is small and
/// this keeps the result deterministic on every backend).
fn apply_moves<B: Backend>(
    z: &Tensor<B, 2>,
    sums: Tensor<B, 2>,
    moves: &[Move],
    k: usize,
    d: usize,
) -> Tensor<B, 2> {
    let device = z.device();
    let rows: Vec<usize> = moves.iter().map(|m| m.0).collect();
    let picked: Vec<f32> = z
        .clone()
        .select(0, int_tensor::<B>(&rows, &device))
        .into_data()
        .iter::<f32>()
        .collect();
    let mut s: Vec<f32> = sums.into_data().iter::<f32>().collect();
    for (m, &(_, from, to)) in moves.iter().enumerate() {
        let x = &picked[m * d..(m + 1) * d];
        for j in 0..d {
            s[from * d + j] -= x[j];
            s[to * d + j] = x[j];
        }
    }
    Tensor::from_data(TensorData::new(s, [k, d]), &device)
}

/// k-means++ seeding on the device: one matrix-vector product and two small read-backs
/// per centre.
fn plus_plus<B: Backend>(
    z: &Tensor<B, 2>,
    k: usize,
    max_candidates: usize,
    rng: &mut ChaCha8Rng,
) -> Tensor<B, 2> {
    let [n, _] = z.dims();
    let device = z.device();
    let m = n.min(max_candidates.max(k));
    let (x, map): (Tensor<B, 2>, Vec<usize>) = if m == n {
        (z.clone(), (0..n).collect())
    } else {
        let mut idx = index::sample(rng, n, m).into_vec();
        idx.sort_unstable();
        (z.clone().select(0, int_tensor::<B>(&idx, &device)), idx)
    };
    let sq = x.clone().square().sum_dim(1); // [m, 1]
    let dist_to = |i: usize| -> Tensor<B, 2> {
        let c = x.clone().slice(i..i + 1);
        let c_sq = c.clone().square().sum();
        let dot = gemm_matmul(x.clone(), c.transpose()); // [m, 1]
        (sq.clone() + c_sq.reshape([1, 1]) - dot.mul_scalar(2.0)).clamp_min(0.0)
    };
    let first = rng.gen_range(0..m);
    let mut chosen = vec![first];
    let mut taken = vec![false; m];
    taken[first] = true;
    let mut d2 = dist_to(first);
    while chosen.len() < k {
        // u in (0, 1): the pick lands on a point whose D² is strictly positive.
        let u = ((rng.gen::<u64>() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let next = match draw_weighted(&d2.clone().reshape([m]), u) {
            Some(i) => i,
            None => {
                // Every candidate coincides with a centre: fall back to a uniform fresh one.
                let free: Vec<usize> = (0..m).filter(|&i| !taken[i]).collect();
                free[rng.gen_range(0..free.len())]
            }
        };
        let next = if taken[next] {
            // Float round-off only; keep the centres distinct as indices.
            (0..m).find(|&i| !taken[i]).expect("m >= k")
        } else {
            next
        };
        taken[next] = true;
        chosen.push(next);
        if chosen.len() < k {
            d2 = d2.min_pair(dist_to(next));
        }
    }
    let rows: Vec<usize> = chosen.iter().map(|&i| map[i]).collect();
    z.clone().select(0, int_tensor::<B>(&rows, &device))
}

/// Entries per block of [`draw_weighted`]'s first read-back.
const DRAW_BLOCK: usize = 1024;

/// The index `i` of `weights` (non-negative) with `W[i-1] ≤ u·W[m-1] < W[i]`, `W` the
/// running sum: a draw with probability proportional to the weight when `u` is uniform in
/// (0, 1); `None` when every weight is zero. Block sums are read back first, then the one
/// block the draw lands in, and the running sums are taken on the host in f64: no device
/// prefix sum, which burn-cubecl computes in O(m²) (each output sums all entries before it;
/// 100,000 candidates × 3,000 centres).
fn draw_weighted<B: Backend>(weights: &Tensor<B, 1>, u: f64) -> Option<usize> {
    let [m] = weights.dims();
    let blocks = m.div_ceil(DRAW_BLOCK);
    let padded = match blocks * DRAW_BLOCK - m {
        0 => weights.clone(),
        pad => Tensor::cat(vec![weights.clone(), Tensor::zeros([pad], &weights.device())], 0),
    };
    let sums: Vec<f64> = padded.reshape([blocks, DRAW_BLOCK]).sum_dim(1).into_data().iter::<f32>().map(f64::from).collect();
    let total: f64 = sums.iter().sum();
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    let target = u * total;
    // The block the running sum passes the target in; none (round-off with u near 1): the
    // last block with weight.
    let block = passing(&sums, 0.0, target).or_else(|| last_positive(&sums))?;
    let start = block * DRAW_BLOCK;
    let within: Vec<f64> = weights.clone().slice(start..(start + DRAW_BLOCK).min(m)).into_data().iter::<f32>().map(f64::from).collect();
    // The device's block sum and the host's running sum round differently: past the block's
    // end, its last entry with weight.
    let j = passing(&within, sums[..block].iter().sum(), target).or_else(|| last_positive(&within));
    j.map(|j| start + j)
}

/// The first index where `acc` plus the running sum of `values` exceeds `target`.
fn passing(values: &[f64], mut acc: f64, target: f64) -> Option<usize> {
    values.iter().position(|&w| {
        acc += w;
        acc > target
    })
}

fn last_positive(values: &[f64]) -> Option<usize> {
    values.iter().rposition(|&w| w > 0.0)
}

#[cfg(test)]
mod tests;
