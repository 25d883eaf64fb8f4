//! Pooled backbone features of a whole dataset (eval transform), and the KNN monitor on top.

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use sca_backbone::ResNet;
use sca_data::{eval_batches, num_eval_batches, DataError, Dataset, EvalTransform, ImageBatch, Subset};
use sca_dist::Replica;

use crate::knn::{l2_normalize, weighted_knn, KnnResult};

/// An [`ImageBatch`] as a tensor on `device`.
pub fn image_tensor<B: Backend>(images: ImageBatch, device: &B::Device) -> Tensor<B, 4> {
    sca_kernels::upload(images.data, images.shape, device)
}

/// Pooled features `[len, D]` of every image of `ds` in index order (as they come from
/// `eval_batches`), with the labels. `normalize` L2-normalises each row. `progress` is called
/// after each batch with (images done, images in total).
#[allow(clippy::too_many_arguments)]
pub fn extract_pooled<B: Backend>(
    backbone: &ResNet<B>,
    ds: Arc<dyn Dataset>,
    transform: &EvalTransform,
    batch_size: usize,
    workers: usize,
    normalize: bool,
    device: &B::Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Tensor<B, 2>, Vec<usize>), DataError> {
    let total = ds.len();
    let mut parts = Vec::with_capacity(num_eval_batches(total, batch_size.max(1)));
    let mut labels = Vec::with_capacity(total);
    for batch in eval_batches(ds, transform, batch_size, workers) {
        let batch = batch?;
        let f = backbone.forward_features(image_tensor(batch.images, device));
        parts.push(if normalize { l2_normalize(f) } else { f });
        labels.extend_from_slice(&batch.labels);
        progress(labels.len(), total);
    }
    if parts.is_empty() {
        return Err(DataError::Config("the dataset is empty".into()));
    }
    Ok((Tensor::cat(parts, 0), labels))
}

/// L2-normalised pooled features of `ds` and its labels, for the KNN bank or queries.
/// Use a backbone on a non-autodiff backend (`.valid()`), so BatchNorm uses running stats.
pub fn extract_features<B: Backend>(
    backbone: &ResNet<B>,
    ds: Arc<dyn Dataset>,
    transform: &EvalTransform,
    batch_size: usize,
    workers: usize,
    device: &B::Device,
) -> Result<(Tensor<B, 2>, Vec<usize>), DataError> {
    extract_pooled(backbone, ds, transform, batch_size, workers, true, device, &mut |_, _| {})
}

/// Settings of the KNN monitor.
#[derive(Clone, Debug, PartialEq)]
pub struct KnnSettings {
    pub k: usize,
    pub t: f32,
    /// Block size of the chunked search (see [`crate::knn`]).
    pub chunk: usize,
    /// Images per forward pass.
    pub batch_size: usize,
    pub workers: usize,
}

impl Default for KnnSettings {
    fn default() -> Self {
        KnnSettings { k: crate::knn::DEFAULT_K, t: crate::knn::DEFAULT_T, chunk: crate::knn::DEFAULT_CHUNK, batch_size: 256, workers: 0 }
    }
}

/// Weighted KNN of a backbone: `train_ds` is the bank, `test_ds` the queries, both through
/// `transform`. Called by pretraining after every epoch.
pub fn knn_eval<B: Backend>(
    backbone: &ResNet<B>,
    train_ds: Arc<dyn Dataset>,
    test_ds: Arc<dyn Dataset>,
    transform: &EvalTransform,
    settings: &KnnSettings,
    device: &B::Device,
) -> Result<KnnResult, DataError> {
    let classes = train_ds.num_classes().max(test_ds.num_classes());
    let (bank, bank_labels) = extract_features(backbone, train_ds, transform, settings.batch_size, settings.workers, device)?;
    let (queries, query_labels) = extract_features(backbone, test_ds, transform, settings.batch_size, settings.workers, device)?;
    Ok(weighted_knn(&bank, &bank_labels, &queries, &query_labels, classes, settings.k, settings.t, settings.chunk))
}

/// [`knn_eval`] with the work split over data-parallel replicas: each embeds its share of
/// both sets, the bank is put together on every replica, each searches its share of the
/// queries against the whole bank, and the hit counts are added up. Every replica returns
/// the single-replica result.
pub fn knn_eval_across<B: Backend>(
    replica: &Replica,
    backbone: &ResNet<B>,
    train_ds: Arc<dyn Dataset>,
    test_ds: Arc<dyn Dataset>,
    transform: &EvalTransform,
    settings: &KnnSettings,
    device: &B::Device,
) -> Result<KnnResult, DataError> {
    if replica.is_single() {
        return knn_eval(backbone, train_ds, test_ds, transform, settings, device);
    }
    let classes = train_ds.num_classes().max(test_ds.num_classes());
    let share = |ds: &Arc<dyn Dataset>| -> Result<(Tensor<B, 2>, Vec<usize>), DataError> {
        let part = Arc::new(Subset::from_indices(ds.clone(), replica.shard(ds.len()).collect())?);
        extract_features(backbone, part, transform, settings.batch_size, settings.workers, device)
    };
    let (bank_part, bank_part_labels) = share(&train_ds)?;
    let d = replica.max(bank_part.dims()[1] as f32) as usize;
    let (n, mine) = (train_ds.len(), replica.shard(train_ds.len()));
    let rows = mine.start * d..mine.end * d;
    let bank = replica.assemble(n * d, rows, &sca_dist::to_vec(bank_part));
    let bank = sca_kernels::upload(bank, [n, d], device);
    let labels: Vec<f32> = bank_part_labels.iter().map(|&l| l as f32).collect();
    let bank_labels: Vec<usize> = replica.assemble(n, mine, &labels).into_iter().map(|l| l as usize).collect();
    let (queries, query_labels) = share(&test_ds)?;
    let local = weighted_knn(&bank, &bank_labels, &queries, &query_labels, classes, settings.k, settings.t, settings.chunk);
    let m = query_labels.len() as f64;
    let hits = replica.sum_vec(vec![(local.top1 * m / 100.0) as f32, (local.top5 * m / 100.0) as f32, m as f32]);
    let total = hits[2] as f64;
    Ok(KnnResult { top1: 100.0 * hits[0].round() as f64 / total, top5: 100.0 * hits[1].round() as f64 / total, n: total as usize, ..local })
}

/// The tensors a KNN evaluation used, as safetensors bytes: `train_features` `[N, D]` and
/// `test_features` `[M, D]` (F32), `train_labels` `[N]` and `test_labels` `[M]` (I64).
pub fn features_safetensors<B: Backend>(
    train: Tensor<B, 2>,
    train_labels: &[usize],
    test: Tensor<B, 2>,
    test_labels: &[usize],
) -> Vec<u8> {
    use safetensors::tensor::{Dtype, TensorView};
    let f = |t: Tensor<B, 2>| -> (Vec<usize>, Vec<u8>) {
        let shape = t.dims().to_vec();
        let v: Vec<f32> = t.into_data().convert::<f32>().to_vec().expect("f32 features");
        (shape, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    };
    let l = |v: &[usize]| -> (Vec<usize>, Vec<u8>) { (vec![v.len()], v.iter().flat_map(|&x| (x as i64).to_le_bytes()).collect()) };
    let parts = [
        ("train_features", Dtype::F32, f(train)),
        ("train_labels", Dtype::I64, l(train_labels)),
        ("test_features", Dtype::F32, f(test)),
        ("test_labels", Dtype::I64, l(test_labels)),
    ];
    let views: Vec<(String, TensorView<'_>)> = parts
        .iter()
        .map(|(name, dt, (shape, bytes))| (name.to_string(), TensorView::new(*dt, shape.clone(), bytes).expect("consistent view")))
        .collect();
    safetensors::serialize(views, &None).expect("serialising in-memory tensors")
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use sca_backbone::{Arch, ResNetConfig};
    use sca_data::scenes::{Scenes, Split};

    type B = Flex;

    #[test]
    fn features_of_a_tiny_dataset() {
        let device = Default::default();
        B::seed(&device, 1);
        let backbone = ResNetConfig::new(Arch::ResNet18).with_small_stem(true).init::<B>(&device);
        let train: Arc<dyn Dataset> = Arc::new(Scenes::new(16, 3, 12, 0, Split::Train).unwrap());
        let test: Arc<dyn Dataset> = Arc::new(Scenes::new(16, 3, 6, 0, Split::Test).unwrap());
        let t = EvalTransform::identity(16, sca_data::scenes::MEAN, sca_data::scenes::STD);
        let mut calls = Vec::new();
        let (raw, labels) = extract_pooled(&backbone, train.clone(), &t, 5, 2, false, &device, &mut |d, n| calls.push((d, n))).unwrap();
        // Batches of 5, 5, 2; labels in index order; 512-d rows.
        assert_eq!(calls, vec![(5, 12), (10, 12), (12, 12)]);
        assert_eq!(labels, sca_data::labels(&*train));
        assert_eq!(raw.dims(), [12, 512]);
        // The normalised features are the raw ones divided by their norms.
        let (unit, _) = extract_features(&backbone, train.clone(), &t, 4, 1, &device).unwrap();
        let (raw, unit): (Vec<f32>, Vec<f32>) = (raw.into_data().to_vec().unwrap(), unit.into_data().to_vec().unwrap());
        for r in 0..12 {
            let row = &raw[r * 512..(r + 1) * 512];
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            for j in 0..512 {
                assert!((unit[r * 512 + j] - row[j] / norm).abs() < 1e-5, "row {r} col {j}");
            }
        }
        let s = KnnSettings { batch_size: 8, workers: 1, ..KnnSettings::default() };
        let r = knn_eval(&backbone, train, test, &t, &s, &device).unwrap();
        // k = 200 is capped at the 12-image bank; three classes make top-5 100%.
        assert_eq!((r.k, r.n, r.top5), (12, 6, 100.0));
    }

    #[test]
    fn dumped_features_have_the_documented_layout() {
        let d = Default::default();
        let bytes = features_safetensors(
            Tensor::<B, 2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &d),
            &[3, 4],
            Tensor::<B, 2>::from_floats([[0.6, 0.8]], &d),
            &[5],
        );
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let check = |name: &str, dtype: safetensors::Dtype, shape: &[usize], data: Vec<u8>| {
            let t = st.tensor(name).unwrap();
            assert_eq!((t.dtype(), t.shape(), t.data()), (dtype, shape, data.as_slice()), "{name}");
        };
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let i64s = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        check("train_features", safetensors::Dtype::F32, &[2, 2], f32s(&[1.0, 0.0, 0.0, 1.0]));
        check("train_labels", safetensors::Dtype::I64, &[2], i64s(&[3, 4]));
        check("test_features", safetensors::Dtype::F32, &[1, 2], f32s(&[0.6, 0.8]));
        check("test_labels", safetensors::Dtype::I64, &[1], i64s(&[5]));
    }
}
