use super::*;
use crate::bank::l2_normalize;
use burn::backend::Flex;

type B = Flex;

fn tensor(v: &[f32], d: usize) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(v.to_vec(), [v.len() / d, d]),
        &Default::default(),
    )
}

fn values(t: &Tensor<B, 2>) -> Vec<f32> {
    t.to_data().iter::<f32>().collect()
}

/// `k` blobs around the unit axes e_0..e_{k-1} of R^d, `per` points each, uniform
/// noise of half-width `noise`; point j belongs to blob j % k. Rows L2-normalised.
fn blobs(k: usize, per: usize, d: usize, noise: f32, seed: u64) -> (Tensor<B, 2>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut v, mut truth) = (Vec::new(), Vec::new());
    for j in 0..k * per {
        let blob = j % k;
        for i in 0..d {
            let centre = if i == blob { 1.0 } else { 0.0 };
            v.push(centre + rng.gen_range(-noise..noise));
        }
        truth.push(blob);
    }
    (l2_normalize(tensor(&v, d)), truth)
}

fn uniform(n: usize, d: usize, seed: u64) -> Tensor<B, 2> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
    l2_normalize(tensor(&v, d))
}

/// Equal up to a relabelling: a bijection maps every true group onto one cluster.
fn same_partition(pred: &[u32], truth: &[usize]) -> bool {
    let mut fwd = std::collections::HashMap::new();
    let mut back = std::collections::HashMap::new();
    pred.iter()
        .zip(truth)
        .all(|(&p, &t)| *fwd.entry(t).or_insert(p) == p && *back.entry(p).or_insert(t) == t)
}

fn cfg(
    c: usize,
    init: KMeansInit,
    metric: Metric,
    seed: u64,
    chunk: Option<usize>,
) -> KMeansConfig {
    KMeansConfig::new(c)
        .with_init(init)
        .with_metric(metric)
        .with_seed(seed)
        .with_chunk_size(chunk)
        .with_iterations(20)
}

#[test]
#[rustfmt::skip]
fn recovers_separated_blobs() {
    fn check(init: KMeansInit, metric: Metric, seed: u64, chunk: Option<usize>) {
        let (z, truth) = blobs(5, 40, 8, 0.15, seed);
        let r = kmeans(&z, &cfg(5, init, metric, seed, chunk)).unwrap();
        assert!(same_partition(&r.assignments, &truth), "{init:?} {metric:?} seed {seed}");
        assert_eq!(r.sizes, vec![40; 5]);
        assert!(r.converged && r.iterations_run <= 3, "{} iterations", r.iterations_run);
    }
    check(KMeansInit::PlusPlus, Metric::Cosine, 0, None);
    check(KMeansInit::PlusPlus, Metric::Cosine, 1, Some(7));
    check(KMeansInit::PlusPlus, Metric::Euclidean, 2, None);
    check(KMeansInit::PlusPlus, Metric::Euclidean, 3, Some(1));
    check(KMeansInit::PlusPlus, Metric::Cosine, 4, Some(64));
}

#[test]
#[rustfmt::skip]
fn hand_computed_updates() {
    // (points, d, warm-start centroids, metric, labels, centroids, inertia, iterations)
    #[allow(clippy::too_many_arguments)]
    fn check(z: &[f32], d: usize, c0: &[f32], metric: Metric, labels: &[u32], c: &[f32], inertia: f64, its: usize) {
        let cfg = KMeansConfig::new(c0.len() / d).with_metric(metric);
        let r = kmeans_from(&tensor(z, d), tensor(c0, d), &cfg).unwrap();
        assert_eq!(r.assignments, labels);
        let got = values(&r.centroids);
        assert!(got.iter().zip(c).all(|(g, e)| (g - e).abs() < 1e-5), "{got:?} vs {c:?}");
        assert!((r.inertia - inertia).abs() < 1e-5, "inertia {}", r.inertia);
        assert_eq!(r.iterations_run, its);
    }
    check(&[0., 0., 0., 1., 10., 0., 10., 1.], 2, &[0., 0., 10., 0.], Metric::Euclidean, &[0, 0, 1, 1], &[0., 0.5, 10., 0.5], 1.0, 1);
    // c0 = normalize(1.8, 0.6) = (0.948683, 0.316228); costs 1 - 0.948683 twice, 0 once.
    check(&[1., 0., 0.8, 0.6, 0., 1.], 2, &[1., 0., 0., 1.], Metric::Cosine, &[0, 0, 1], &[0.948683, 0.316228, 0., 1.], 2.0 * (1.0 - 0.948683), 1);
    // Three points, one centre: the mean, not moved by a second update.
    check(&[0., 0., 3., 0., 0., 3.], 2, &[5., 5.], Metric::Euclidean, &[0, 0, 0], &[1., 1.], 2.0 + 5.0 + 5.0, 1);
}

#[test]
fn chunked_assignment_equals_unchunked() {
    fn check(metric: Metric, chunks: &[usize]) {
        let z = uniform(300, 6, 11);
        let whole = kmeans(&z, &cfg(7, KMeansInit::PlusPlus, metric, 5, Some(300))).unwrap();
        for &chunk in chunks {
            let r = kmeans(&z, &cfg(7, KMeansInit::PlusPlus, metric, 5, Some(chunk))).unwrap();
            assert_eq!(r.assignments, whole.assignments, "chunk {chunk}");
            assert_eq!(r.iterations_run, whole.iterations_run);
            let (a, b) = (values(&r.centroids), values(&whole.centroids));
            assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5));
            let plain = assign(&z, &r.centroids, metric, 300);
            assert_eq!(assign(&z, &r.centroids, metric, chunk).labels, plain.labels);
        }
    }
    check(Metric::Cosine, &[1, 7, 64, 299]);
    check(Metric::Euclidean, &[1, 13, 150]);
}

#[test]
fn assignments_are_nearest_of_returned_centroids() {
    fn check(init: KMeansInit, metric: Metric, iterations: usize) {
        let z = uniform(250, 5, 3);
        let r = kmeans(
            &z,
            &cfg(9, init, metric, 1, None).with_iterations(iterations),
        )
        .unwrap();
        let a = assign(&z, &r.centroids, metric, 17);
        assert_eq!(a.labels, r.assignments);
        assert!((a.inertia() - r.inertia).abs() < 1e-3);
        assert_eq!(r.sizes.iter().sum::<usize>(), 250);
        assert!(r.iterations_run <= iterations);
    }
    check(KMeansInit::Random, Metric::Cosine, 0);
    check(KMeansInit::Random, Metric::Euclidean, 2);
    check(KMeansInit::PlusPlus, Metric::Cosine, 30);
}

#[test]
fn lloyd_does_not_increase_inertia() {
    fn check(metric: Metric) {
        let z = uniform(400, 4, 8);
        let inertia = |its| {
            kmeans(
                &z,
                &cfg(12, KMeansInit::Random, metric, 2, None).with_iterations(its),
            )
            .unwrap()
            .inertia
        };
        let seq: Vec<f64> = (0..6).map(inertia).collect();
        assert!(seq.windows(2).all(|w| w[1] <= w[0] + 1e-4), "{seq:?}");
        assert!(seq[5] < seq[0] * 0.9, "{seq:?}");
    }
    check(Metric::Cosine);
    check(Metric::Euclidean);
}

#[test]
fn empty_cluster_is_reseeded_with_farthest_point() {
    // Four blobs; warm start with three blob centres and one vector facing away from
    // every point. Cluster 3 gets nothing, is re-seeded with a blob-3 point (the
    // farthest from its centroid) and then takes blob 3 exactly.
    fn check(metric: Metric) {
        let (z, truth) = blobs(4, 10, 4, 0.1, 9);
        let far = [-0.5, -0.5, -0.5, -0.5];
        let c0: Vec<f32> = [[1., 0., 0., 0.], [0., 1., 0., 0.], [0., 0., 1., 0.], far].concat();
        let r = kmeans_from(
            &z,
            tensor(&c0, 4),
            &KMeansConfig::new(4).with_metric(metric),
        )
        .unwrap();
        let want: Vec<u32> = truth.iter().map(|&t| t as u32).collect();
        assert_eq!(r.assignments, want);
        assert_eq!(r.reseeded, 1);
        assert_eq!(r.sizes, vec![10; 4]);
    }
    check(Metric::Cosine);
    check(Metric::Euclidean);
}

#[test]
fn more_clusters_than_distinct_points() {
    // 3 distinct points, 4 copies each, C = 5: no NaN, every point on a centroid,
    // exactly 3 clusters used, and duplicates keep being re-seeded.
    fn check(init: KMeansInit, metric: Metric) {
        let pts = [[1., 0., 0.], [0., 1., 0.], [0., 0., 1.]];
        let v: Vec<f32> = (0..12).flat_map(|j| pts[j % 3]).collect();
        let r = kmeans(
            &tensor(&v, 3),
            &cfg(5, init, metric, 0, None).with_iterations(4),
        )
        .unwrap();
        assert!(values(&r.centroids).iter().all(|x| x.is_finite()));
        assert!(r.inertia.abs() < 1e-6, "inertia {}", r.inertia);
        assert_eq!(r.sizes.iter().filter(|&&s| s > 0).count(), 3);
        assert_eq!(r.sizes.iter().sum::<usize>(), 12);
        assert!(r.reseeded >= 2, "reseeded {}", r.reseeded);
        assert!(same_partition(
            &r.assignments,
            &(0..12).map(|j| j % 3).collect::<Vec<_>>()
        ));
    }
    check(KMeansInit::PlusPlus, Metric::Cosine);
    check(KMeansInit::Random, Metric::Euclidean);
}

#[test]
fn deterministic_for_a_seed() {
    fn check(init: KMeansInit, metric: Metric, seed: u64) {
        let z = uniform(300, 8, 21);
        let run = || {
            kmeans(
                &z,
                &cfg(10, init, metric, seed, Some(64)).with_iterations(3),
            )
            .unwrap()
        };
        let (a, b) = (run(), run());
        assert_eq!(a.assignments, b.assignments);
        assert_eq!(values(&a.centroids), values(&b.centroids));
        assert_eq!(a.inertia, b.inertia);
        let other = kmeans(
            &z,
            &cfg(10, init, metric, seed + 1, Some(64)).with_iterations(3),
        )
        .unwrap();
        assert_ne!(values(&other.centroids), values(&a.centroids));
    }
    check(KMeansInit::PlusPlus, Metric::Cosine, 0);
    check(KMeansInit::Random, Metric::Cosine, 7);
    check(KMeansInit::PlusPlus, Metric::Euclidean, 3);
}

#[test]
fn plus_plus_on_a_candidate_subset() {
    // 5 blobs of 200, seeding from 50 candidates: still one centre per blob.
    let (z, truth) = blobs(5, 200, 8, 0.1, 4);
    let r = kmeans(
        &z,
        &cfg(5, KMeansInit::PlusPlus, Metric::Cosine, 4, None).with_plus_plus_candidates(50),
    )
    .unwrap();
    assert!(same_partition(&r.assignments, &truth));
}

#[test]
fn tolerance_stops_early() {
    fn check(tolerance: Option<f64>, iterations_run: usize, converged: bool) {
        let z = uniform(200, 4, 5);
        let c = cfg(8, KMeansInit::Random, Metric::Cosine, 0, None)
            .with_iterations(3)
            .with_tolerance(tolerance);
        let r = kmeans(&z, &c).unwrap();
        assert_eq!((r.iterations_run, r.converged), (iterations_run, converged));
    }
    check(Some(1e9), 1, true);
    check(Some(0.0), 3, false);
    check(None, 3, false);
}

#[test]
fn bad_inputs_are_errors() {
    let z = uniform(4, 3, 0);
    let err = |c| kmeans(&z, &KMeansConfig::new(c)).unwrap_err();
    assert_eq!(
        err(0),
        KMeansError::BadClusterCount {
            clusters: 0,
            points: 4
        }
    );
    assert_eq!(
        err(5),
        KMeansError::BadClusterCount {
            clusters: 5,
            points: 4
        }
    );
    let bad = kmeans_from(&z, uniform(2, 2, 0), &KMeansConfig::new(2)).unwrap_err();
    assert_eq!(
        bad,
        KMeansError::BadCentroids {
            got: [2, 2],
            clusters: 2,
            dim: 3
        }
    );
}

#[test]
fn weighted_draw_lands_where_the_running_sum_passes_u_times_the_total() {
    // 2,500 weights over three blocks of 1,024: 1 at 3, 2 at 1,500 (second block), 1 at
    // 2,499 (the last, partial block), zeros elsewhere; total 4.
    let mut w = vec![0.0f32; 2500];
    (w[3], w[1500], w[2499]) = (1.0, 2.0, 1.0);
    let w = Tensor::<B, 1>::from_data(TensorData::new(w, [2500]), &Default::default());
    // u·4 below 1 → 3; in [1, 3) → 1,500; in [3, 4) → 2,499.
    for (u, want) in [(1e-9, 3), (0.2, 3), (0.25, 1500), (0.5, 1500), (0.7499, 1500), (0.75, 2499), (0.999_999, 2499)] {
        assert_eq!(draw_weighted(&w, u), Some(want), "u = {u}");
    }
    // A length that fills its blocks exactly, a single block, and no weight at all.
    let ramp = Tensor::<B, 1>::from_data(TensorData::new((0..2048).map(|i| (i % 2) as f32).collect::<Vec<_>>(), [2048]), &Default::default());
    // 1,024 ones at the odd indices: u·1024 = 511.5 → the 512th one, index 1,023.
    assert_eq!(draw_weighted(&ramp, 511.5 / 1024.0), Some(1023));
    assert_eq!(draw_weighted(&ramp, 512.5 / 1024.0), Some(1025));
    let one_block = Tensor::<B, 1>::from_data(TensorData::new(vec![0.0f32, 5.0, 0.0, 5.0], [4]), &Default::default());
    assert_eq!(draw_weighted(&one_block, 0.49), Some(1));
    assert_eq!(draw_weighted(&one_block, 0.51), Some(3));
    assert_eq!(draw_weighted(&Tensor::<B, 1>::zeros([3000], &Default::default()), 0.5), None);
}
