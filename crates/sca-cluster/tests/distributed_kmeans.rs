//! k-means with the assignment split over two replicas gives every replica the
//! single-replica result.

use burn::backend::flex::FlexDevice;
use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};
use sca_cluster::bank::l2_normalize;
use sca_cluster::kmeans::{kmeans, kmeans_across, KMeansConfig, KMeansInit};
use sca_dist::{group, GroupSpec};

#[test]
fn two_replicas_find_the_single_replica_clusters() {
    // 301 points (odd: the shards differ in size) around 6 directions in 16-d.
    let centres = Tensor::<Flex, 2>::random([6, 16], Distribution::Normal(0.0, 1.0), &FlexDevice);
    let pick: Vec<i64> = (0..301).map(|i| (i * 7 % 6) as i64).collect();
    let idx = Tensor::from_data(burn::tensor::TensorData::new(pick, [301]), &FlexDevice);
    let z = l2_normalize(centres.select(0, idx) + Tensor::random([301, 16], Distribution::Normal(0.0, 0.4), &FlexDevice));
    let cfg = KMeansConfig::new(6).with_iterations(8).with_init(KMeansInit::PlusPlus).with_seed(3).with_chunk_size(Some(50));
    let want = kmeans(&z, &cfg).unwrap();

    group::reset();
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let (z, cfg) = (z.clone(), cfg.clone());
            std::thread::spawn(move || {
                let r = sca_dist::join(&GroupSpec::local(2), rank).unwrap();
                let got = kmeans_across(&z, &cfg, &r).unwrap();
                (got.assignments, got.iterations_run, got.inertia, sca_dist::to_vec(got.centroids), r.comm_totals().calls)
            })
        })
        .collect();
    let want_centroids = sca_dist::to_vec(want.centroids.clone());
    for h in handles {
        let (labels, iterations, inertia, centroids, calls) = h.join().unwrap();
        assert_eq!(labels, want.assignments);
        assert_eq!(iterations, want.iterations_run);
        assert!((inertia - want.inertia).abs() <= 1e-4 * want.inertia.max(1.0), "{inertia} vs {}", want.inertia);
        let err = centroids.iter().zip(&want_centroids).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-5, "centroids differ by {err}");
        assert!(calls >= 3, "the passes went through the collective ({calls} calls)");
    }
}
