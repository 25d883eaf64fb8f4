//! Weighted KNN (InstDisc / SwAV monitor): L2-normalised features, the train set as the
//! bank, the `k` most cosine-similar bank entries vote for their class with weight
//! `exp(sim / t)`; the class with the largest summed weight is the prediction.
//!
//! The similarity matrix is never materialised whole: queries and bank are both taken in
//! blocks of at most `chunk` rows, so memory stays at `chunk × (chunk + k)` similarities
//! whatever the bank size (ImageNet: 1.28M × 2048). On a GPU each bank block's top-k is
//! selected by a kernel (`sca_kernels::top_k`: Burn's CubeCL backends would sort every block
//! on the host) and merged into a running top-k on the device, and only `queries × k` values
//! and indices come back to the host, where the votes are counted; on the CPU backends each
//! block comes back and a partial selection per row (rayon) keeps the running top-k, which
//! is 3× faster there.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
// Similarity blocks on an explicit matmul kernel (no per-shape autotuning on CUDA).
use sca_kernels::{gemm_matmul, top_k};
use serde::{Deserialize, Serialize};

/// Accuracy of a KNN evaluation, in percent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct KnnResult {
    pub top1: f64,
    pub top5: f64,
    /// Neighbours actually used (`min(k, bank size)`).
    pub k: usize,
    pub t: f64,
    /// Number of queries (test images).
    pub n: usize,
}

/// Default number of neighbours (InstDisc, SwAV).
pub const DEFAULT_K: usize = 200;
/// Default temperature of the neighbour weights.
pub const DEFAULT_T: f32 = 0.1;
/// Default block size (rows of queries and of the bank per similarity block).
pub const DEFAULT_CHUNK: usize = 4096;

/// L2-normalises each row (rows of zeros stay zero).
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// Whether the top-k selection runs on the host: on the CPU backends a device `topk` sorts
/// every block row and cost three times the similarity matmuls (`examples/knn_bench.rs`);
/// on a GPU the blocks stay on the device.
fn select_on_host<B: Backend>(device: &B::Device) -> bool {
    let name = B::name(device);
    name.contains("flex") || name.contains("ndarray")
}

/// Best first: larger similarity, then lower bank index.
fn better(a: &(f32, usize), b: &(f32, usize)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Merges one row of a similarity block (bank indices from `offset`) into a running top-k.
fn merge_row(top: &mut Vec<(f32, usize)>, row: &[f32], offset: usize, k: usize) {
    // Entries not above the current k-th cannot enter (ties keep the lower, older index).
    let full = top.len() >= k;
    let floor = if full { top.iter().map(|e| e.0).fold(f32::INFINITY, f32::min) } else { f32::NEG_INFINITY };
    for (j, &v) in row.iter().enumerate() {
        if !full || v > floor {
            top.push((v, offset + j));
        }
    }
    if top.len() > k {
        top.select_nth_unstable_by(k - 1, better);
        top.truncate(k);
    }
}

/// [`nearest`] with the selection on the host: the same result, ties included.
fn nearest_host<B: Backend>(bank: &Tensor<B, 2>, queries: &Tensor<B, 2>, k: usize, chunk: usize) -> (Vec<Vec<f32>>, Vec<Vec<usize>>) {
    use rayon::prelude::*;
    let ([n_bank, d], [n_query, _]) = (bank.dims(), queries.dims());
    let mut top: Vec<Vec<(f32, usize)>> = vec![Vec::with_capacity(2 * k); n_query];
    for q0 in (0..n_query).step_by(chunk) {
        let q1 = (q0 + chunk).min(n_query);
        let q = queries.clone().slice([q0..q1, 0..d]);
        for b0 in (0..n_bank).step_by(chunk) {
            let b1 = (b0 + chunk).min(n_bank);
            let sim: Vec<f32> = gemm_matmul(q.clone(), bank.clone().slice([b0..b1, 0..d]).transpose()).into_data().convert::<f32>().to_vec().expect("f32 similarities");
            top[q0..q1].par_iter_mut().zip(sim.par_chunks(b1 - b0)).for_each(|(t, row)| merge_row(t, row, b0, k));
        }
    }
    top.into_iter()
        .map(|mut t| {
            t.sort_unstable_by(better);
            t.into_iter().unzip()
        })
        .unzip()
}

/// The `k` nearest bank entries of each query: `(similarities, bank indices)`, each
/// `queries × min(k, bank)` in decreasing similarity (equal similarities: lower index
/// first). Chunked as described in the module doc.
pub fn nearest<B: Backend>(bank: &Tensor<B, 2>, queries: &Tensor<B, 2>, k: usize, chunk: usize) -> (Vec<Vec<f32>>, Vec<Vec<usize>>) {
    let [n_bank, d] = bank.dims();
    let [n_query, dq] = queries.dims();
    assert_eq!(d, dq, "bank and queries must have the same feature width");
    assert!(k > 0 && chunk > 0, "k and chunk must be positive");
    let k = k.min(n_bank);
    if k == 0 {
        return (vec![Vec::new(); n_query], vec![Vec::new(); n_query]);
    }
    if select_on_host::<B>(&bank.device()) {
        return nearest_host(bank, queries, k, chunk);
    }
    nearest_device(bank, queries, k, chunk)
}

/// [`nearest`] with the selection on the device: each block's top-k ([`top_k`], a GPU kernel
/// on CUDA), merged into the running top-k on the device; only `queries × k` values and
/// indices come back, sorted on the host.
fn nearest_device<B: Backend>(bank: &Tensor<B, 2>, queries: &Tensor<B, 2>, k: usize, chunk: usize) -> (Vec<Vec<f32>>, Vec<Vec<usize>>) {
    let ([n_bank, d], [n_query, _]) = (bank.dims(), queries.dims());
    let (mut sims, mut idx) = (Vec::with_capacity(n_query), Vec::with_capacity(n_query));
    for q0 in (0..n_query).step_by(chunk) {
        let q1 = (q0 + chunk).min(n_query);
        let q = queries.clone().slice([q0..q1, 0..d]);
        let mut running: Option<(Tensor<B, 2>, Tensor<B, 2, Int>)> = None;
        for b0 in (0..n_bank).step_by(chunk) {
            let b1 = (b0 + chunk).min(n_bank);
            let block = bank.clone().slice([b0..b1, 0..d]);
            let sim = gemm_matmul(q.clone(), block.transpose());
            let (v, i) = top_k(sim, k.min(b1 - b0));
            let i = i.add_scalar(b0 as i64);
            running = Some(match running {
                None => (v, i),
                Some((rv, ri)) => {
                    // Running entries first: they come from lower bank indices, so on the GPU
                    // (which keeps the leftmost of equal values, in column order) the lower
                    // index wins a tie, as on the host path.
                    let v = Tensor::cat(vec![rv, v], 1);
                    let i = Tensor::cat(vec![ri, i], 1);
                    let keep = k.min(v.dims()[1]);
                    let (v, pos) = top_k(v, keep);
                    (v, i.gather(1, pos))
                }
            });
        }
        let (v, i) = running.expect("bank is not empty");
        let kk = v.dims()[1];
        let v: Vec<f32> = v.into_data().convert::<f32>().to_vec().expect("f32 similarities");
        let i: Vec<i64> = i.into_data().convert::<i64>().to_vec().expect("int indices");
        for r in 0..(q1 - q0) {
            let mut row: Vec<(f32, usize)> = (r * kk..(r + 1) * kk).map(|e| (v[e], i[e] as usize)).collect();
            row.sort_unstable_by(better);
            let (s, j): (Vec<f32>, Vec<usize>) = row.into_iter().unzip();
            sims.push(s);
            idx.push(j);
        }
    }
    (sims, idx)
}

/// Classes ranked by summed neighbour weight `exp(sim / t)`, best first; equal weights
/// rank the lower class index first (so classes no neighbour voted for follow in index order).
pub fn rank_classes(sims: &[f32], labels: &[usize], num_classes: usize, t: f32) -> Vec<usize> {
    let mut votes = vec![0.0f64; num_classes];
    for (&s, &c) in sims.iter().zip(labels) {
        votes[c] += (s as f64 / t as f64).exp();
    }
    let mut order: Vec<usize> = (0..num_classes).collect();
    order.sort_by(|&a, &b| votes[b].total_cmp(&votes[a]).then(a.cmp(&b)));
    order
}

/// Class ranking of every query (best first, see [`rank_classes`]).
pub fn predict<B: Backend>(
    train: &Tensor<B, 2>,
    train_labels: &[usize],
    test: &Tensor<B, 2>,
    num_classes: usize,
    k: usize,
    t: f32,
    chunk: usize,
) -> Vec<Vec<usize>> {
    assert_eq!(train.dims()[0], train_labels.len(), "one label per bank row");
    assert!(t > 0.0, "temperature must be positive");
    let (sims, idx) = nearest(train, test, k, chunk);
    sims.iter()
        .zip(&idx)
        .map(|(s, i)| {
            let labels: Vec<usize> = i.iter().map(|&j| train_labels[j]).collect();
            rank_classes(s, &labels, num_classes, t)
        })
        .collect()
}

/// Weighted KNN top-1 / top-5 accuracy (percent). `train` and `test` are expected
/// L2-normalised (as [`crate::extract_features`] returns them); `chunk` bounds the block
/// size (see the module doc). `k` larger than the bank uses the whole bank.
#[allow(clippy::too_many_arguments)]
pub fn weighted_knn<B: Backend>(
    train: &Tensor<B, 2>,
    train_labels: &[usize],
    test: &Tensor<B, 2>,
    test_labels: &[usize],
    num_classes: usize,
    k: usize,
    t: f32,
    chunk: usize,
) -> KnnResult {
    assert_eq!(test.dims()[0], test_labels.len(), "one label per query row");
    let ranks = predict(train, train_labels, test, num_classes, k, t, chunk);
    let (mut hit1, mut hit5) = (0usize, 0usize);
    for (order, &y) in ranks.iter().zip(test_labels) {
        hit1 += usize::from(order[0] == y);
        hit5 += usize::from(order.iter().take(5).any(|&c| c == y));
    }
    let n = test_labels.len();
    let pct = |h: usize| if n == 0 { 0.0 } else { 100.0 * h as f64 / n as f64 };
    // The shortest decimal of the f32 (0.1, not 0.10000000149).
    let t = format!("{t}").parse().unwrap_or(t as f64);
    KnnResult { top1: pct(hit1), top5: pct(hit5), k: k.min(train_labels.len()), t, n }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    fn mat(rows: &[[f32; 2]]) -> Tensor<B, 2> {
        let data: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(data, [rows.len(), 2]), &Default::default())
    }

    /// Unit vectors at known angles. Similarities to the query (1, 0):
    /// 1.0 (class 0), 0.8 (1), 0.6 (1), 0.0 (2), -1.0 (0).
    const BANK: [[f32; 2]; 5] = [[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]];
    const BANK_LABELS: [usize; 5] = [0, 1, 1, 2, 0];

    fn check(query: [f32; 2], k: usize, t: f32, expected: &[usize]) {
        let ranks = predict(&mat(&BANK), &BANK_LABELS, &mat(&[query]), 3, k, t, DEFAULT_CHUNK);
        assert_eq!(ranks[0], expected, "query {query:?} k {k} t {t}");
    }

    #[test]
    fn hand_built_bank() {
        // k = 1: the nearest entry's class, then the rest in index order (zero votes).
        check([1.0, 0.0], 1, 0.1, &[0, 1, 2]);
        // k = 3, T = 0.1: e^10 = 22026 (class 0) against e^8 + e^6 = 3384 (class 1).
        check([1.0, 0.0], 3, 0.1, &[0, 1, 2]);
        // k = 3, T = 1: e^1 = 2.718 (class 0) against e^0.8 + e^0.6 = 4.048 (class 1).
        check([1.0, 0.0], 3, 1.0, &[1, 0, 2]);
        // k larger than the bank: all five vote; T = 1: class 1 4.048, class 0 e + 1/e = 3.086, class 2 1.
        check([1.0, 0.0], 200, 1.0, &[1, 0, 2]);
        // Query (0, 1): sims 0, .6, .8, 1, 0 → k = 2: class 2 (e^10) over class 1 (e^8).
        check([0.0, 1.0], 2, 0.1, &[2, 1, 0]);
        // k = 4, T = 1 → class 1: e^.6 + e^.8 = 4.048 over class 2: e = 2.718 and class 0: 1.
        check([0.0, 1.0], 4, 1.0, &[1, 2, 0]);
    }

    #[test]
    fn ties() {
        // Two identical entries of classes 1 and 0: equal votes rank the lower class first.
        let bank = mat(&[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]);
        let r = predict(&bank, &[1, 0, 2], &mat(&[[1.0, 0.0]]), 3, 2, 0.1, DEFAULT_CHUNK);
        assert_eq!(r[0], vec![0, 1, 2]);
        // A tie at the k-th similarity between two entries of the same class: either one
        // gives class 1 (sims .8 and .8 against .6 for class 2).
        let bank = mat(&[[0.6, 0.8], [0.0, 1.0], [0.0, 1.0]]);
        let r = predict(&bank, &[2, 1, 1], &mat(&[[0.0, 1.0]]), 3, 1, 0.1, DEFAULT_CHUNK);
        assert_eq!(r[0][0], 1);
    }

    #[test]
    fn accuracy_and_k_larger_than_bank() {
        // Queries with labels 0, 1, 2, 2 → predictions (k = 1) 0, 1, 2, 0: top-1 75%.
        let q = mat(&[[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.99, 0.141]]);
        let r = weighted_knn(&mat(&BANK), &BANK_LABELS, &q, &[0, 1, 2, 2], 3, 1, 0.1, DEFAULT_CHUNK);
        assert_eq!((r.top1, r.top5, r.k, r.n), (75.0, 100.0, 1, 4));
        let r = weighted_knn(&mat(&BANK), &BANK_LABELS, &q, &[0, 1, 2, 2], 3, 200, 0.1, DEFAULT_CHUNK);
        assert_eq!(r.k, 5);
    }

    #[test]
    fn top5_among_seven_classes() {
        // Bank entry i (class i) at angle 10°·i; the query at 0° ranks classes 0, 1, 2, ...
        let bank: Vec<[f32; 2]> = (0..7).map(|i| [(i as f32 * 0.1745).cos(), (i as f32 * 0.1745).sin()]).collect();
        let labels: Vec<usize> = (0..7).collect();
        let q = mat(&[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]);
        // Truth 0 (top-1 and top-5), 4 (top-5 only), 6 (neither).
        let r = weighted_knn(&mat(&bank), &labels, &q, &[0, 4, 6], 7, 7, 0.1, DEFAULT_CHUNK);
        assert!((r.top1 - 100.0 / 3.0).abs() < 1e-9 && (r.top5 - 200.0 / 3.0).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn chunked_equals_unchunked() {
        let device = Default::default();
        B::seed(&device, 7);
        let bank = l2_normalize(Tensor::<B, 2>::random([300, 16], burn::tensor::Distribution::Normal(0.0, 1.0), &device));
        let queries = l2_normalize(Tensor::<B, 2>::random([50, 16], burn::tensor::Distribution::Normal(0.0, 1.0), &device));
        let labels: Vec<usize> = (0..300).map(|i| (i * 7 + i / 3) % 7).collect();
        let truth: Vec<usize> = (0..50).map(|i| i % 7).collect();
        let whole = nearest(&bank, &queries, 20, 100_000);
        for chunk in [1, 7, 19, 64] {
            let part = nearest(&bank, &queries, 20, chunk);
            assert_eq!(part.1, whole.1, "chunk {chunk}");
            for (a, b) in part.0.iter().flatten().zip(whole.0.iter().flatten()) {
                assert!((a - b).abs() < 1e-5, "chunk {chunk}");
            }
            let a = weighted_knn(&bank, &labels, &queries, &truth, 7, 20, 0.1, chunk);
            let b = weighted_knn(&bank, &labels, &queries, &truth, 7, 20, 0.1, 100_000);
            assert_eq!(a, b, "chunk {chunk}");
        }
        // The whole-matrix answer, checked against a plain sort on the host.
        let bd: Vec<f32> = bank.to_data().to_vec().unwrap();
        let qd: Vec<f32> = queries.to_data().to_vec().unwrap();
        for q in 0..50 {
            let mut sims: Vec<(f32, usize)> =
                (0..300).map(|j| ((0..16).map(|d| qd[q * 16 + d] * bd[j * 16 + d]).sum(), j)).collect();
            sims.sort_by(|a, b| b.0.total_cmp(&a.0));
            let expect: Vec<usize> = sims[..20].iter().map(|s| s.1).collect();
            assert_eq!(whole.1[q], expect, "query {q}");
        }
    }

    #[test]
    fn host_and_device_selection_agree() {
        let device = Default::default();
        let unit = |n| l2_normalize(Tensor::<B, 2>::random([n, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device));
        let (bank, queries) = (unit(300), unit(50));
        for (k, chunk) in [(20, 64), (7, 1000), (300, 37)] {
            let host = nearest_host(&bank, &queries, k, chunk);
            let dev = nearest_device(&bank, &queries, k, chunk);
            assert_eq!(host.1, dev.1, "indices, k={k} chunk={chunk}");
            assert_eq!(host.0, dev.0, "similarities, k={k} chunk={chunk}");
        }
        // Ties on the host path: equal similarities keep the lower bank index, whatever the chunking.
        let bank = Tensor::<B, 2>::from_floats([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], &device);
        let q = Tensor::<B, 2>::from_floats([[1.0, 0.0]], &device);
        assert_eq!(nearest_host(&bank, &q, 2, 1).1, vec![vec![0, 1]]);
        assert_eq!(nearest_host(&bank, &q, 2, 4).1, vec![vec![0, 1]]);
    }

    #[test]
    fn l2_normalize_rows() {
        let x: Vec<f32> = l2_normalize(mat(&[[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])).into_data().to_vec().unwrap();
        assert_eq!(x, vec![0.6, 0.8, 0.0, 0.0, 0.0, -1.0]);
    }
}
