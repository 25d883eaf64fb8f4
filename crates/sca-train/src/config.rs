//! The run configuration: one JSON document, saved as `config.json` in every run directory
//! so evaluation can rebuild the exact model. Unknown keys and wrong types are errors that
//! name the key path; `--set key=value` overrides edit the JSON before it is typed.

use serde::{Deserialize, Serialize};

use sca_backbone::{Arch, ConvImpl, Precision};
use sca_data::{AugmentConfig, DatasetSpec};

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Run name: the run directory is `runs/<name>` unless `--out` says otherwise.
    pub name: String,
    pub seed: u64,
    pub epochs: usize,
    /// Source images per step (positives come on top).
    pub batch_size: usize,
    pub model: ModelConfig,
    pub data: DataConfig,
    pub engine: EngineConfig,
    pub addon: AddonConfig,
    pub optim: OptimConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    /// Log a metrics line every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Keep a numbered checkpoint every this many epochs (the latest is always kept).
    #[serde(default = "one")]
    pub checkpoint_every: usize,
    /// Arithmetic of the backbone's convolutions: `f32`, `bf16` or `f16` (f32 master
    /// weights either way; f16 adds dynamic loss scaling). See sca_backbone::precision.
    #[serde(default)]
    pub precision: Precision,
}

fn default_log_every() -> usize {
    10
}

fn on() -> bool {
    true
}

fn one() -> usize {
    1
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub arch: Arch,
    #[serde(default)]
    pub small_stem: bool,
    #[serde(default)]
    pub zero_init_residual: bool,
    /// Start from these torchvision-named weights instead of a random initialisation.
    #[serde(default)]
    pub init_weights: Option<String>,
    /// How the convolutions run: `auto` (the default: `gemm` on CUDA, `matmul` elsewhere),
    /// `matmul` (im2col + GEMM), `gemm` (CUDA: implicit-GEMM kernels chosen without autotune)
    /// or `native` (the backend's conv kernels, autotuned on CUDA).
    #[serde(default)]
    pub conv: ConvImpl,
    /// CUDA, `gemm` convolutions: keep activations and their gradients channels-last (NHWC)
    /// in memory from one convolution to the next, instead of copying each convolution's
    /// result back to NCHW (see `sca_kernels::layout`). Same values either way; on by
    /// default: on an H200 a step took 894 ms channels-last against 1,002 ms NCHW (same
    /// kernels, docs/BENCHMARKS.md). No effect on the CPU, whose convolutions are NCHW.
    #[serde(default = "on")]
    pub channels_last: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub dataset: DatasetSpec,
    /// Reproducible subsample of the training set (None: all of it).
    #[serde(default)]
    pub train_size: Option<usize>,
    /// Reproducible subsample of the test set used by the KNN monitor.
    #[serde(default)]
    pub test_size: Option<usize>,
    /// Side of the evaluation images (resize + centre crop).
    pub image_size: usize,
    /// Loader threads; 0 means one per core.
    #[serde(default)]
    pub workers: usize,
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    pub augment: AugmentConfig,
}

fn default_prefetch() -> usize {
    2
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum EngineConfig {
    Swav {
        /// Number of prototypes K.
        prototypes: usize,
        hidden_dim: usize,
        out_dim: usize,
        #[serde(default = "swav_epsilon")]
        epsilon: f64,
        #[serde(default = "three")]
        sinkhorn_iterations: usize,
        #[serde(default = "swav_temperature")]
        temperature: f64,
        /// Crops whose codes are computed (SwAV: the two large crops).
        #[serde(default = "swav_assign")]
        assignment_crops: Vec<usize>,
        /// Queue length (0: no queue) and the epoch from which it is used.
        #[serde(default)]
        queue_length: usize,
        #[serde(default)]
        queue_start_epoch: usize,
        /// Prototypes receive no update during the first this-many steps.
        #[serde(default)]
        freeze_prototypes_steps: usize,
    },
    Simsiam {
        proj_dim: usize,
        pred_dim: usize,
    },
}

fn swav_epsilon() -> f64 {
    0.05
}
fn three() -> usize {
    3
}
fn swav_temperature() -> f64 {
    0.1
}
fn swav_assign() -> Vec<usize> {
    vec![0, 1]
}

/// Where the add-on reads its feature map from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TapConfig {
    Last,
    Stage3,
    Multi,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MaskNormConfig {
    Minmax,
    None,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KMeansInitConfig {
    Plusplus,
    Random,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct AddonConfig {
    pub enabled: bool,
    /// k-means clusters C (the classifier's width).
    pub clusters: usize,
    /// Positives P per source image.
    #[serde(default = "one")]
    pub positives: usize,
    #[serde(default = "default_tap")]
    pub tap: TapConfig,
    #[serde(default = "default_mask_norm")]
    pub mask_norm: MaskNormConfig,
    /// Classifier temperature τ_c (eq. 6).
    #[serde(default = "default_tau_c")]
    pub tau_c: f64,
    /// Loss weights (w0, w1, w2) of L = w0·L_ssl + w1·L_μ + w2·L_cls.
    #[serde(default = "default_weights")]
    pub weights: [f64; 3],
    #[serde(default = "default_kmeans_iters")]
    pub kmeans_iterations: usize,
    #[serde(default = "default_kmeans_init")]
    pub kmeans_init: KMeansInitConfig,
}

fn default_tap() -> TapConfig {
    TapConfig::Last
}
fn default_mask_norm() -> MaskNormConfig {
    MaskNormConfig::Minmax
}
fn default_tau_c() -> f64 {
    0.05
}
fn default_weights() -> [f64; 3] {
    [1.0, 0.05, 0.1]
}
fn default_kmeans_iters() -> usize {
    10
}
fn default_kmeans_init() -> KMeansInitConfig {
    KMeansInitConfig::Plusplus
}

/// One parameter group's learning-rate schedule: linear warm-up from `start` to `base`,
/// then cosine to `final`.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    pub start: f64,
    pub base: f64,
    #[serde(rename = "final")]
    pub final_lr: f64,
    pub warmup_epochs: usize,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// LARS/LARC (SwAV) or plain SGD with momentum.
    pub lars: bool,
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    pub weight_decay: f64,
    /// Biases and BN parameters skip LARS adaptation and weight decay.
    #[serde(default)]
    pub exclude_bias_and_bn: bool,
    /// Multiply every learning rate by batch_size / 256.
    #[serde(default)]
    pub scale_lr_with_batch: bool,
    /// Backbone and engine head.
    pub core: LrSchedule,
    /// Attention head and cluster classifier.
    pub addon: LrSchedule,
}

fn default_momentum() -> f64 {
    0.9
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Run the weighted-KNN monitor every this many epochs (0: never).
    pub knn_every: usize,
    pub knn_k: usize,
    pub knn_t: f64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { knn_every: 1, knn_k: 200, knn_t: 0.1 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name}: invalid JSON: {msg}")]
    Json { source_name: String, msg: String },
    #[error("{source_name}: key '{path}': {msg}")]
    Key { source_name: String, path: String, msg: String },
    #[error("override '{0}': expected key=value")]
    Override(String),
    #[error("override '{key}': {msg}")]
    OverrideKey { key: String, msg: String },
    #[error("{source_name}: {msg}")]
    Invalid { source_name: String, msg: String },
}

/// Parses JSON text, applies `key=value` overrides (value parsed as JSON, else taken as a
/// string), and types the result. `source_name` (the file) appears in every error.
pub fn parse(text: &str, source_name: &str, overrides: &[String]) -> Result<TrainConfig, ConfigError> {
    let mut value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ConfigError::Json { source_name: source_name.into(), msg: e.to_string() })?;
    for o in overrides {
        apply_override(&mut value, o)?;
    }
    from_value(value, source_name)
}

/// Types a JSON value, naming the offending key path on error.
pub fn from_value(value: serde_json::Value, source_name: &str) -> Result<TrainConfig, ConfigError> {
    let cfg: TrainConfig = serde_path_to_error::deserialize(value).map_err(|e| ConfigError::Key {
        source_name: source_name.into(),
        path: e.path().to_string(),
        msg: e.inner().to_string(),
    })?;
    cfg.validate().map_err(|msg| ConfigError::Invalid { source_name: source_name.into(), msg })?;
    Ok(cfg)
}

/// `a.b.c=value`: sets a nested key. The key must already exist unless its parent is an
/// object that accepts it (unknown keys are then rejected when the config is typed).
pub fn apply_override(root: &mut serde_json::Value, assignment: &str) -> Result<(), ConfigError> {
    let (key, raw) = assignment.split_once('=').ok_or_else(|| ConfigError::Override(assignment.into()))?;
    let value = serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.to_string()));
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let obj = node.as_object_mut().ok_or_else(|| ConfigError::OverrideKey {
            key: key.into(),
            msg: format!("'{}' is not an object", parts[..i].join(".")),
        })?;
        if i == parts.len() - 1 {
            obj.insert(part.to_string(), value);
            return Ok(());
        }
        node = obj.entry(part.to_string()).or_insert_with(|| serde_json::json!({}));
    }
    unreachable!("split always yields at least one part")
}

impl TrainConfig {
    fn validate(&self) -> Result<(), String> {
        let positive = [("epochs", self.epochs), ("batch_size", self.batch_size), ("log_every", self.log_every), ("checkpoint_every", self.checkpoint_every)];
        for (k, v) in positive {
            if v == 0 {
                return Err(format!("key '{k}' must be at least 1"));
            }
        }
        if self.addon.enabled && self.addon.clusters < 2 {
            return Err("key 'addon.clusters' must be at least 2".into());
        }
        if self.addon.enabled && self.addon.positives == 0 {
            return Err("key 'addon.positives' must be at least 1 when the add-on is enabled".into());
        }
        let aug = &self.data.augment;
        if aug.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || aug.mean.iter().any(|m| !m.is_finite()) {
            return Err(format!("keys 'data.augment.mean'/'std' must be finite with std > 0, got {:?} / {:?}", aug.mean, aug.std));
        }
        for (k, lr) in [("optim.core", &self.optim.core), ("optim.addon", &self.optim.addon)] {
            if [lr.start, lr.base, lr.final_lr].iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(format!("key '{k}': learning rates must be finite and not negative"));
            }
        }
        if let EngineConfig::Swav { assignment_crops, .. } = &self.engine {
            let views = self.data.augment.num_views();
            if views < 2 {
                return Err(format!("key 'data.augment.crops': SwAV needs at least 2 views, got {views}"));
            }
            if let Some(a) = assignment_crops.iter().find(|&&a| a >= views) {
                return Err(format!("key 'engine.assignment_crops': crop {a} does not exist ({views} views)"));
            }
        }
        if let EngineConfig::Simsiam { .. } = &self.engine {
            if self.data.augment.num_views() != 2 {
                return Err("key 'data.augment.crops': SimSiam uses exactly 2 views".into());
            }
        }
        Ok(())
    }

    /// A learning rate after the optional linear scaling with batch size.
    pub fn scaled(&self, lr: f64) -> f64 {
        if self.optim.scale_lr_with_batch {
            lr * self.batch_size as f64 / 256.0
        } else {
            lr
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = include_str!("../../../configs/default.json");

    fn check(overrides: &[&str], expected: Result<(), &str>) {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let got = parse(DEFAULT, "default.json", &o).map(|_| ()).map_err(|e| e.to_string());
        assert_eq!(got.as_ref().map(|_| ()).map_err(|e| e.as_str()), expected, "{overrides:?}");
    }

    #[test]
    fn every_shipped_config_parses() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).unwrap();
                parse(&text, &path.display().to_string(), &[]).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 1);
    }

    #[test]
    fn overrides_and_errors() {
        check(&[], Ok(()));
        check(&["epochs=2", "addon.enabled=false", "data.train_size=256"], Ok(()));
        check(&["engine={\"kind\":\"simsiam\",\"proj_dim\":64,\"pred_dim\":16}"], Ok(()));
        check(&["epochs"], Err("override 'epochs': expected key=value"));
        check(&["epochs=two"], Err("default.json: key 'epochs': invalid type: string \"two\", expected usize"));
        check(&["addon.clusterz=3"], Err("default.json: key 'addon.clusterz': unknown field `clusterz`, expected one of `enabled`, `clusters`, `positives`, `tap`, `mask_norm`, `tau_c`, `weights`, `kmeans_iterations`, `kmeans_init`"));
        check(&["epochs.x=1"], Err("override 'epochs.x': 'epochs' is not an object"));
        check(&["addon.clusters=1"], Err("default.json: key 'addon.clusters' must be at least 2"));
        check(&["engine.assignment_crops=[0,5]"], Err("default.json: key 'engine.assignment_crops': crop 5 does not exist (2 views)"));
        check(&["model.arch=vgg"], Err("default.json: key 'model.arch': unknown variant `vgg`, expected one of `resnet18`, `resnet34`, `resnet50`"));
        check(&["precision=bf16", "model.conv=native"], Ok(()));
        check(&["precision=fp8"], Err("default.json: key 'precision': unknown variant `fp8`, expected one of `f32`, `bf16`, `f16`"));
        check(&["model.conv=winograd"], Err("default.json: key 'model.conv': unknown variant `winograd`, expected one of `native`, `matmul`, `gemm`, `auto`"));
        check(&["model.channels_last=yes"], Err("default.json: key 'model.channels_last': invalid type: string \"yes\", expected a boolean"));
    }

    #[test]
    fn channels_last_is_on_by_default() {
        // What it switches is process-wide (sca_kernels::layout), so the tests that run
        // in parallel here do not read it back.
        assert!(parse(DEFAULT, "d", &[]).unwrap().model.channels_last);
        assert!(!parse(DEFAULT, "d", &["model.channels_last=false".into()]).unwrap().model.channels_last);
    }

    #[test]
    fn precision_and_conv_default_to_f32_auto_and_reach_the_model() {
        let cfg = parse(DEFAULT, "d", &[]).unwrap();
        assert_eq!((cfg.precision, cfg.model.conv), (Precision::F32, ConvImpl::Auto));
        let cfg = parse(DEFAULT, "d", &["precision=f16".into(), "model.conv=native".into()]).unwrap();
        let model = crate::model::SslModel::<burn::backend::Flex>::new(&cfg, &Default::default());
        assert_eq!((model.backbone.precision, model.backbone.conv_impl), (Precision::F16, ConvImpl::Native));
    }

    #[test]
    fn lr_scaling() {
        let cfg = parse(DEFAULT, "d", &["batch_size=512".into()]).unwrap();
        assert_eq!(cfg.scaled(0.3), 0.6);
        let cfg = parse(DEFAULT, "d", &["batch_size=512".into(), "optim.scale_lr_with_batch=false".into()]).unwrap();
        assert_eq!(cfg.scaled(0.3), 0.3);
    }
}
