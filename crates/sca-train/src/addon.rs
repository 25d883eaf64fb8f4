//! Glue between the loop and the add-on crates: epoch-start clustering and the add-on's
//! forward pass on the backbone's stage maps.

use std::sync::Arc;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use serde_json::json;

use sca_attention::{tap_features, AddOn, AddOnOutput, MaskNorm, Tap};
use sca_backbone::ResNet;
use sca_cluster::bank::MemoryBank;
use sca_cluster::kmeans::{kmeans_across, KMeansConfig, KMeansInit, Metric};
use sca_cluster::stats::{cluster_sizes, cluster_stats, nmi};
use sca_data::{Dataset, LoaderConfig};
use sca_dist::Replica;

use crate::config::{KMeansInitConfig, MaskNormConfig, TapConfig, TrainConfig};
use crate::model::{to_tensor, SslModel};
use crate::trainer::TrainError;

pub fn tap(t: TapConfig) -> Tap {
    match t {
        TapConfig::Last => Tap::Last,
        TapConfig::Stage3 => Tap::Stage3,
        TapConfig::Multi => Tap::Multi,
    }
}

pub fn mask_norm(m: MaskNormConfig) -> MaskNorm {
    match m {
        MaskNormConfig::Minmax => MaskNorm::MinMax,
        MaskNormConfig::None => MaskNorm::None,
    }
}

/// Memory bank pass (one augmented view per image, no gradient, BN in evaluation mode) and
/// k-means. Returns the pseudo-labels and statistics for the log.
pub fn cluster_epoch<B: Backend>(
    model: &SslModel<B>,
    train: &Arc<dyn Dataset>,
    cfg: &TrainConfig,
    epoch: usize,
    loader: &LoaderConfig,
    replica: &Replica,
    device: &B::Device,
) -> Result<(Vec<u32>, serde_json::Value), TrainError> {
    let n = train.len();
    let mut bank: Option<MemoryBank<B>> = None;
    // Each replica embeds its share of the images (the loader's shard); the shares are then
    // put together so that every replica holds the whole bank.
    let mut start = loader.shard.range(n).start;
    for batch in sca_data::bank_batches(train.clone(), &cfg.data.augment, loader, epoch) {
        let batch = batch?;
        let z = model.embed(to_tensor(batch.images, device));
        let bank = bank.get_or_insert_with(|| MemoryBank::new(n, z.dims()[1], device));
        let rows = z.dims()[0];
        bank.write(start, z).map_err(|e| TrainError::Other(e.to_string()))?;
        start += rows;
    }
    let bank = bank.ok_or_else(|| TrainError::Other("the training set is empty (or smaller than the number of replicas)".into()))?;
    let bank = replica.sum(bank.into_tensor());
    let a = &cfg.addon;
    let kcfg = KMeansConfig::new(a.clusters)
        .with_iterations(a.kmeans_iterations)
        .with_init(match a.kmeans_init {
            KMeansInitConfig::Plusplus => KMeansInit::PlusPlus,
            KMeansInitConfig::Random => KMeansInit::Random,
        })
        .with_metric(Metric::Cosine)
        .with_seed(cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let result = kmeans_across(&bank, &kcfg, replica).map_err(|e| TrainError::Other(format!("k-means: {e}")))?;
    let sizes = cluster_sizes(&result.assignments, a.clusters);
    let s = cluster_stats(&sizes);
    let truth = sca_data::labels(train.as_ref());
    let stats = json!({
        "clusters": a.clusters, "min_size": s.min, "max_size": s.max, "mean_size": s.mean, "empty": s.empty,
        "nmi": nmi(&result.assignments, &truth), "kmeans_iterations": result.iterations_run,
        "reseeded": result.reseeded, "inertia": result.inertia,
    });
    Ok((result.assignments, stats))
}

pub fn describe(stats: &serde_json::Value) -> String {
    format!(
        "{} clusters, sizes {}..{} (mean {:.1}, {} empty), NMI with true classes {:.3}",
        stats["clusters"], stats["min_size"], stats["max_size"], stats["mean_size"].as_f64().unwrap_or(0.0),
        stats["empty"], stats["nmi"].as_f64().unwrap_or(0.0)
    )
}

/// The add-on's losses for sources (stage maps of the first view) and their positives.
pub fn forward<B: AutodiffBackend>(
    addon: &AddOn<B>,
    backbone: &ResNet<B>,
    source_stages: [Tensor<B, 4>; 4],
    positive_stages: [Tensor<B, 4>; 4],
    source_labels: Tensor<B, 1, Int>,
    positive_labels: Tensor<B, 1, Int>,
) -> AddOnOutput<B> {
    let source = tap_features(source_stages, addon.tap);
    let positives = tap_features(positive_stages, addon.tap);
    // With the stage-3 tap the explanation map still has to pass the last stage.
    let early = addon.tap == Tap::Stage3;
    let rest = |x: Tensor<B, 4>| if early { backbone.layer(4, x) } else { x };
    addon.forward(source, positives, source_labels, positive_labels, rest)
}
