use std::sync::Arc;

use sca_data::scenes::{Scenes, Split};
use sca_data::*;

fn scenes(len: usize) -> Arc<dyn Dataset> {
    Arc::new(Scenes::new(32, 4, len, 0, Split::Train).unwrap())
}

fn aug() -> AugmentConfig {
    AugmentConfig::swav_scaled(32, [0.5; 3], [0.25; 3])
}

fn cfg(batch_size: usize, workers: usize) -> LoaderConfig {
    LoaderConfig { batch_size, workers, prefetch: 2, seed: 7, ..Default::default() }
}

fn all(it: impl Iterator<Item = Result<TrainBatch, DataError>>) -> Vec<TrainBatch> {
    it.map(|b| b.unwrap()).collect()
}

#[test]
fn batch_counts() {
    for (len, bs, train, eval) in [(10, 4, 2, 3), (8, 4, 2, 2), (3, 4, 0, 1), (0, 4, 0, 0), (5, 0, 0, 5)] {
        assert_eq!(num_train_batches(len, bs), train, "train {len}/{bs}");
        assert_eq!(num_eval_batches(len, bs), eval, "eval {len}/{bs}");
    }
}

#[test]
fn epoch_order_is_a_permutation_keyed_by_seed_and_epoch() {
    let a = epoch_order(100, 1, 0);
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    assert_eq!(a, epoch_order(100, 1, 0));
    assert_ne!(a, epoch_order(100, 1, 1));
    assert_ne!(a, epoch_order(100, 2, 0));
}

#[test]
fn train_batches_shapes_order_and_labels() {
    let ds = scenes(22);
    let batches = all(train_batches(ds.clone(), &aug(), &cfg(4, 2), 3, 0, None));
    assert_eq!(batches.len(), 5, "22 / 4 with the last partial batch dropped");
    let order = epoch_order(22, 7, 3);
    for (b, batch) in batches.iter().enumerate() {
        assert_eq!(batch.indices, order[b * 4..(b + 1) * 4]);
        assert_eq!(batch.labels, batch.indices.iter().map(|i| i % 4).collect::<Vec<_>>());
        let shapes: Vec<[usize; 4]> = batch.crops.iter().map(|c| c.shape).collect();
        assert_eq!(
            shapes,
            [
                [4, 3, 32, 32],
                [4, 3, 32, 32],
                [4, 3, 14, 14],
                [4, 3, 14, 14],
                [4, 3, 14, 14],
                [4, 3, 14, 14],
                [4, 3, 14, 14],
                [4, 3, 14, 14]
            ]
        );
        assert!(batch.crops.iter().all(|c| c.data.len() == c.shape.iter().product::<usize>()));
        assert!(batch.positives.is_none() && batch.positive_indices.is_empty());
        // Two views of the same source differ.
        assert_ne!(batch.crops[0].image(0), batch.crops[1].image(0));
    }
}

#[test]
fn results_do_not_depend_on_worker_count() {
    let ds = scenes(24);
    let pos = same_label_positives(Arc::new(labels(&*ds)), 2);
    let one = all(train_batches(ds.clone(), &aug(), &cfg(6, 1), 1, 0, Some(pos.clone())));
    let three = all(train_batches(ds.clone(), &aug(), &LoaderConfig { prefetch: 0, ..cfg(6, 3) }, 1, 0, Some(pos)));
    assert_eq!(one.len(), 4);
    for (a, b) in one.iter().zip(&three) {
        assert_eq!(a.indices, b.indices);
        assert_eq!(a.crops, b.crops);
        assert_eq!(a.positives, b.positives);
        assert_eq!(a.positive_indices, b.positive_indices);
    }
    let bank1: Vec<EvalBatch> = bank_batches(ds.clone(), &aug(), &cfg(5, 1), 2).map(|b| b.unwrap()).collect();
    let bank3: Vec<EvalBatch> = bank_batches(ds, &aug(), &cfg(5, 3), 2).map(|b| b.unwrap()).collect();
    assert!(bank1.iter().zip(&bank3).all(|(a, b)| a.images == b.images && a.indices == b.indices));
}

#[test]
fn resuming_mid_epoch_gives_the_same_batches() {
    let ds = scenes(20);
    let full = all(train_batches(ds.clone(), &aug(), &cfg(4, 2), 5, 0, None));
    let resumed = all(train_batches(ds.clone(), &aug(), &cfg(4, 2), 5, 3, None));
    assert_eq!(resumed.len(), 2);
    for (a, b) in full[3..].iter().zip(&resumed) {
        assert_eq!((&a.indices, &a.crops), (&b.indices, &b.crops));
    }
    assert_eq!(train_batches(ds, &aug(), &cfg(4, 2), 5, 9, None).count(), 0);
}

#[test]
fn epochs_and_seeds_change_the_views() {
    let ds = scenes(8);
    let first =
        |epoch, seed| train_batches(ds.clone(), &aug(), &LoaderConfig { seed, ..cfg(8, 2) }, epoch, 0, None).next().unwrap().unwrap();
    let a = first(0, 7);
    let pos = |b: &TrainBatch, index: usize| b.indices.iter().position(|&i| i == index).unwrap();
    let b = first(1, 7);
    assert_ne!(a.crops[0].image(pos(&a, 0)), b.crops[0].image(pos(&b, 0)));
    let c = first(0, 8);
    assert_ne!(a.crops[0].image(pos(&a, 0)), c.crops[0].image(pos(&c, 0)));
}

#[test]
fn positives_come_from_the_same_label_source_major() {
    let ds = scenes(24);
    let labels = Arc::new(labels(&*ds));
    let batch = train_batches(ds, &aug(), &cfg(6, 2), 0, 0, Some(same_label_positives(labels.clone(), 3))).next().unwrap().unwrap();
    let p = batch.positives.as_ref().unwrap();
    assert_eq!(p.shape, [18, 3, 32, 32]);
    assert_eq!(batch.positive_indices.len(), 18);
    for (s, &src) in batch.indices.iter().enumerate() {
        let mine = &batch.positive_indices[s * 3..(s + 1) * 3];
        assert!(mine.iter().all(|&j| labels[j] == labels[src] && j != src), "source {src}: {mine:?}");
        let mut distinct = mine.to_vec();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "6 others in the group: drawn without replacement");
    }
}

#[track_caller]
fn check_positives(labels: &[usize], p: usize, index: usize, want_pool: &[usize], distinct: bool) {
    let f = same_label_positives(Arc::new(labels.to_vec()), p);
    for key in 0..20 {
        let got = f(index, key);
        assert_eq!(got.len(), p);
        assert!(got.iter().all(|j| want_pool.contains(j)), "{got:?} not within {want_pool:?}");
        if distinct {
            let mut d = got.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), p, "{got:?}");
        }
    }
}

#[test]
fn positive_sampling_rules() {
    let labels = [0, 1, 0, 2, 0, 0, 1, 0];
    check_positives(&labels, 2, 3, &[3], false); // alone: itself
    check_positives(&labels, 3, 1, &[6], false); // one other: with replacement
    check_positives(&labels, 3, 0, &[2, 4, 5, 7], true); // enough others: distinct, never itself
    check_positives(&labels, 4, 7, &[0, 2, 4, 5], true);
    let f = same_label_positives(Arc::new(labels.to_vec()), 2);
    assert_eq!(f(0, 1), f(0, 1));
}

#[test]
fn inconsistent_positive_counts_are_an_error() {
    let ds = scenes(8);
    let odd: PositiveFn = Arc::new(|i, _| vec![i; 1 + i % 2]);
    let err = train_batches(ds, &aug(), &cfg(4, 1), 0, 0, Some(odd)).find_map(|b| b.err()).unwrap();
    assert!(matches!(err, DataError::Positives { .. }), "{err}");
}

#[test]
fn eval_batches_in_index_order_with_boxes() {
    let ds = scenes(10);
    let eval = EvalTransform::identity(32, [0.0; 3], [1.0; 3]);
    let batches: Vec<EvalBatch> = eval_batches(ds.clone(), &eval, 4, 2).map(|b| b.unwrap()).collect();
    assert_eq!(batches.iter().map(|b| b.indices.clone()).collect::<Vec<_>>(), [vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
    assert_eq!(batches[2].images.shape, [2, 3, 32, 32]);
    assert_eq!(batches[1].labels, [0, 1, 2, 3]);
    let s = ds.load(5).unwrap();
    assert_eq!(batches[1].bboxes[1], s.bbox);
    let pixel = s.image.get_pixel(3, 2);
    assert!((batches[1].images.image(1)[2 * 32 + 3] - pixel[0] as f32 / 255.0).abs() < 1e-6);
}

#[test]
fn bank_batches_one_view_in_index_order() {
    let ds = scenes(7);
    let a: Vec<EvalBatch> = bank_batches(ds.clone(), &aug(), &cfg(3, 2), 4).map(|b| b.unwrap()).collect();
    assert_eq!(a.iter().map(|b| b.indices.len()).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(a[1].indices, [3, 4, 5]);
    assert_eq!(a[0].images.shape, [3, 3, 32, 32]);
    let b: Vec<EvalBatch> = bank_batches(ds, &aug(), &cfg(3, 2), 5).map(|b| b.unwrap()).collect();
    assert_ne!(a[0].images, b[0].images, "a new epoch draws new views");
}

#[test]
fn corrupt_images_are_replaced_unless_strict() {
    use crate::image_folder::{good_tree, put};
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    let full = crate::image_folder::jpeg_bytes(64, 64, 3);
    put(dir.path(), "cat/c_cut.jpg", &full[..full.len() / 2]);
    let small = AugmentConfig { crops: vec![CropSpec::new(1, 8, 0.5, 1.0)], ..aug() };
    for strict in [false, true] {
        let opts = ImageFolderOptions { strict, verify: Verify::Header, progress: None };
        let ds: Arc<dyn Dataset> = Arc::new(ImageFolder::open(dir.path(), &opts).unwrap());
        let eval = EvalTransform::identity(8, [0.0; 3], [1.0; 3]);
        let got: Vec<Result<EvalBatch, DataError>> = eval_batches(ds.clone(), &eval, 5, 1).collect();
        if strict {
            assert!(got[0].as_ref().unwrap_err().to_string().contains("c_cut.jpg"));
            assert!(train_batches(ds, &small, &cfg(5, 1), 0, 0, None).next().unwrap().is_err());
        } else {
            assert_eq!(got[0].as_ref().unwrap().indices, [0, 1, 3, 3, 4], "slot 2 served by image 3");
            assert_eq!(train_batches(ds.clone(), &small, &cfg(5, 1), 0, 0, None).next().unwrap().unwrap().indices.len(), 5);
            assert_eq!(ds.bad_files().len(), 1);
        }
    }
}

#[test]
fn bad_loader_settings_are_errors() {
    let ds = scenes(8);
    let err = train_batches(ds.clone(), &aug(), &cfg(0, 1), 0, 0, None).next().unwrap().unwrap_err();
    assert!(err.to_string().contains("batch_size"), "{err}");
    let bad = AugmentConfig { flip_p: 2.0, ..aug() };
    assert!(train_batches(ds.clone(), &bad, &cfg(4, 1), 0, 0, None).next().unwrap().is_err());
    let eval = EvalTransform { crop: 64, ..EvalTransform::identity(32, [0.0; 3], [1.0; 3]) };
    assert!(eval_batches(ds, &eval, 4, 1).next().unwrap().is_err());
}

#[test]
fn subsets_are_reproducible() {
    let ds = scenes(100);
    let a = Subset::new(ds.clone(), 10, 3);
    assert_eq!(a.len(), 10);
    assert_eq!(a.indices(), Subset::new(ds.clone(), 10, 3).indices());
    assert_ne!(a.indices(), Subset::new(ds.clone(), 10, 4).indices());
    assert!(a.indices().windows(2).all(|w| w[0] < w[1]));
    assert_eq!(a.label(0), ds.label(a.parent_index(0)));
    assert_eq!(a.load(1).unwrap().image, ds.load(a.parent_index(1)).unwrap().image);
    assert_eq!(Subset::new(ds.clone(), 500, 0).len(), 100);
    let s = Subset::from_indices(ds.clone(), vec![5, 2]).unwrap();
    assert_eq!((s.len(), s.label(0), s.label(1)), (2, 1, 2));
    assert!(Subset::from_indices(ds, vec![100]).is_err());
}

#[test]
fn a_panic_in_the_producer_reaches_the_consumer() {
    let ds = scenes(8);
    let bad: PositiveFn = Arc::new(|_, _| panic!("sampler bug"));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| train_batches(ds, &aug(), &cfg(4, 1), 0, 0, Some(bad)).count()));
    let msg = caught.unwrap_err();
    assert_eq!(msg.downcast_ref::<&str>(), Some(&"sampler bug"));
}

#[test]
fn replica_shards_put_together_are_the_single_replica_batches() {
    let ds = scenes(24);
    let pos = same_label_positives(Arc::new(labels(&*ds)), 1);
    let whole = all(train_batches(ds.clone(), &aug(), &cfg(6, 1), 1, 0, Some(pos.clone())));
    let shard = |rank| LoaderConfig { shard: Shard { rank, world: 2 }, ..cfg(6, 1) };
    let halves: Vec<Vec<TrainBatch>> = (0..2).map(|r| all(train_batches(ds.clone(), &aug(), &shard(r), 1, 0, Some(pos.clone())))).collect();
    assert_eq!(halves[0].len(), whole.len());
    for (b, w) in whole.iter().enumerate() {
        let (a, c) = (&halves[0][b], &halves[1][b]);
        assert_eq!([a.indices.clone(), c.indices.clone()].concat(), w.indices);
        assert_eq!([a.positive_indices.clone(), c.positive_indices.clone()].concat(), w.positive_indices);
        for v in 0..w.crops.len() {
            assert_eq!(a.crops[v].shape[0], 3);
            assert_eq!([a.crops[v].data.clone(), c.crops[v].data.clone()].concat(), w.crops[v].data, "view {v}");
        }
    }
    // The memory-bank pass: each replica covers its half of the dataset, same crops.
    let bank = |c: &LoaderConfig| -> Vec<f32> { bank_batches(ds.clone(), &aug(), c, 2).flat_map(|b| b.unwrap().images.data).collect() };
    let single = bank(&cfg(5, 1));
    assert_eq!([bank(&shard(0)), bank(&shard(1))].concat(), single);
}
