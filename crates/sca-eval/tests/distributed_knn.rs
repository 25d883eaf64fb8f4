//! Weighted KNN split over two replicas equals the single-replica evaluation.

use std::sync::Arc;

use burn::backend::flex::FlexDevice;
use burn::backend::Flex;
use sca_backbone::{Arch, ResNetConfig};
use sca_data::scenes::{Scenes, Split};
use sca_data::{Dataset, EvalTransform};
use sca_dist::{group, GroupSpec};
use sca_eval::{knn_eval, knn_eval_across, KnnSettings};

#[test]
fn two_replicas_score_like_one() {
    let train: Arc<dyn Dataset> = Arc::new(Scenes::new(32, 4, 61, 0, Split::Train).unwrap());
    let test: Arc<dyn Dataset> = Arc::new(Scenes::new(32, 4, 27, 0, Split::Test).unwrap());
    let transform = EvalTransform::identity(32, [0.5; 3], [0.25; 3]);
    let settings = KnnSettings { k: 5, batch_size: 16, workers: 1, ..KnnSettings::default() };
    let backbone = ResNetConfig::new(Arch::ResNet18).with_small_stem(true).init::<Flex>(&FlexDevice);
    let want = knn_eval(&backbone, train.clone(), test.clone(), &transform, &settings, &FlexDevice).unwrap();

    group::reset();
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let (train, test, transform, settings, backbone) = (train.clone(), test.clone(), transform.clone(), settings.clone(), backbone.clone());
            std::thread::spawn(move || {
                let r = sca_dist::join(&GroupSpec::local(2), rank).unwrap();
                knn_eval_across(&r, &backbone, train, test, &transform, &settings, &FlexDevice).unwrap()
            })
        })
        .collect();
    for h in handles {
        let got = h.join().unwrap();
        assert_eq!(got.n, 27);
        assert!((got.top1 - want.top1).abs() < 1e-9, "top-1 {} vs {}", got.top1, want.top1);
        assert!((got.top5 - want.top5).abs() < 1e-9, "top-5 {} vs {}", got.top5, want.top5);
    }
    // Not a trivial score: random features at 4 classes neither always right nor never.
    assert!(want.top1 > 0.0 && want.top1 < 100.0, "{}", want.top1);
}
