//! sca-export: a pretrained backbone, as torchvision and Detectron2 read it.
//!
//! Input is a safetensors file in torchvision naming (what `sca weights --save` and
//! pretraining write). [`export`] checks it is a ResNet-18/34/50 it knows and returns
//! the bytes of every output file; nothing here touches the disk except
//! [`write_atomic`], which the CLI uses to put each file in place whole.
//!
//! - `backbone_torchvision.safetensors`: torchvision keys and shapes without `fc.*`, BN
//!   counters included, for `resnet50().load_state_dict(..., strict=False)`.
//! - `backbone_detectron2.pkl`: `{"model": {name: ndarray}, "__author__": "sca",
//!   "matching_heuristics": True}` with MoCo's renaming (see [`detectron2_name`]).
//! - `detectron2/`: the paper's R50-C4 VOC and COCO configs and a README.
//!
//! Pure Rust, no Burn: export works on any machine that can read the file.

mod arch;
mod fsutil;
pub mod pickle;
mod rename;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

pub use arch::{Arch, KeySpec, Mismatch};
pub use fsutil::write_atomic;
pub use rename::{detectron2_name, in_detectron2};

/// `__author__` of the Detectron2 pickle; Detectron2 logs it when loading.
pub const AUTHOR: &str = "sca";
pub const TORCHVISION_FILE: &str = "backbone_torchvision.safetensors";
pub const DETECTRON2_FILE: &str = "backbone_detectron2.pkl";
pub const DETECTRON2_DIR: &str = "detectron2";

/// The configs as shipped; `@WEIGHTS@`, `@DIR@` and `@PKL@` are filled in at export.
const CONFIGS: [(&str, &str); 4] = [
    (
        "Base-RCNN-C4-BN.yaml",
        include_str!("../configs/Base-RCNN-C4-BN.yaml"),
    ),
    (
        "pascal_voc_R_50_C4_24k.yaml",
        include_str!("../configs/pascal_voc_R_50_C4_24k.yaml"),
    ),
    (
        "coco_R_50_C4_2x.yaml",
        include_str!("../configs/coco_R_50_C4_2x.yaml"),
    ),
    ("README.md", include_str!("../configs/README.md")),
];

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("not a readable safetensors file ({0}); is it truncated or of another format?")]
    Format(String),
    #[error("{}", unknown_arch_message(*.closest, .mismatch))]
    UnknownArch { closest: Arch, mismatch: Mismatch },
    #[error(
        "conv1.weight is {shape:?}: this backbone has the small-image (3x3, stride 1) stem, \
         which torchvision's and Detectron2's ResNets (7x7 stride-2 stem) cannot load"
    )]
    SmallStem { shape: Vec<usize> },
    #[error("the weights are a {found}, not the {expected} that was asked for")]
    ArchMismatch { expected: Arch, found: Arch },
    #[error(
        "no Detectron2 configs for {0}: the paper's R50-C4 detectors put a bottleneck res5 in \
         the ROI head, which a {0}'s basic-block weights cannot fill"
    )]
    NoConfigs(Arch),
}

fn unknown_arch_message(closest: Arch, m: &Mismatch) -> String {
    const SHOWN: usize = 8;
    fn list(items: &[String]) -> String {
        let mut s = items
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if items.len() > SHOWN {
            s.push_str(&format!(", ... ({} in all)", items.len()));
        }
        s
    }
    let mut parts = vec![format!(
        "not a ResNet-18/34/50 in torchvision naming; closest is {closest}, which differs by"
    )];
    if !m.missing.is_empty() {
        parts.push(format!("missing keys: {}", list(&m.missing)));
    }
    if !m.unexpected.is_empty() {
        parts.push(format!("unexpected keys: {}", list(&m.unexpected)));
    }
    if !m.wrong.is_empty() {
        let wrong: Vec<String> = m
            .wrong
            .iter()
            .map(|(k, found, want)| format!("{k} is {found}, expected {want}"))
            .collect();
        parts.push(format!("wrong shape or dtype: {}", list(&wrong)));
    }
    if let Some(prefix) = common_prefix_hint(m) {
        parts.push(format!(
            "the keys look prefixed with '{prefix}'; save the backbone alone"
        ));
    }
    parts.join("\n  ")
}

/// A prefix such as `backbone.` or `module.` under which every missing key is present:
/// the commonest cause of a mismatch (a whole-model checkpoint, or a DDP wrapper's).
fn common_prefix_hint(m: &Mismatch) -> Option<String> {
    let missing: BTreeSet<&str> = m.missing.iter().map(String::as_str).collect();
    let unexpected: BTreeSet<&str> = m.unexpected.iter().map(String::as_str).collect();
    let first = m.unexpected.iter().find_map(|u| {
        u.match_indices('.')
            .map(|(i, _)| i + 1)
            .find(|&i| missing.contains(&u[i..]))
            .map(|i| &u[..i])
    })?;
    missing
        .iter()
        .all(|k| unexpected.contains(format!("{first}{k}").as_str()))
        .then(|| first.to_string())
}

/// The refusal for a key set that is no known ResNet. When the keys sit under a prefix,
/// the architecture under it is the one to compare with.
fn unknown_arch(
    entries: &BTreeMap<String, arch::Entry>,
    closest: Arch,
    mismatch: Mismatch,
) -> ExportError {
    if let Some(prefix) = common_prefix_hint(&mismatch) {
        let inner = entries
            .iter()
            .filter_map(|(k, e)| Some((k.strip_prefix(&prefix)?.to_string(), e.clone())))
            .collect();
        let closest = match arch::detect(&inner) {
            Ok(arch) | Err((arch, _)) => arch,
        };
        return ExportError::UnknownArch {
            closest,
            mismatch: arch::compare(closest, entries),
        };
    }
    ExportError::UnknownArch { closest, mismatch }
}

/// One stored tensor: F32 weights, or an I64 scalar BN counter.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Little-endian raw bytes, exactly as in the file.
    pub data: Vec<u8>,
}

/// A checked backbone: every torchvision key but `fc.*`, in torchvision's order.
#[derive(Clone, Debug)]
pub struct Backbone {
    pub arch: Arch,
    pub tensors: Vec<Tensor>,
}

/// Reads and checks a torchvision-named safetensors file. `fc.*` is dropped; BN
/// counters missing from the file are set to 0, as a fresh torchvision model has them.
pub fn read_backbone(bytes: &[u8]) -> Result<Backbone, ExportError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| ExportError::Format(e.to_string()))?;
    let entries: BTreeMap<String, arch::Entry> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            (
                name,
                arch::Entry {
                    dtype: format!("{:?}", v.dtype()),
                    shape: v.shape().to_vec(),
                },
            )
        })
        .collect();
    if let Some(stem) = entries.get("conv1.weight") {
        if stem.shape.len() == 4 && stem.shape[2..] == [3, 3] {
            return Err(ExportError::SmallStem {
                shape: stem.shape.clone(),
            });
        }
    }
    let arch = arch::detect(&entries)
        .map_err(|(closest, mismatch)| unknown_arch(&entries, closest, mismatch))?;
    let tensors = arch
        .backbone_keys()
        .into_iter()
        .map(|spec| match st.tensor(&spec.name) {
            Ok(v) => Tensor {
                name: spec.name,
                dtype: v.dtype(),
                shape: v.shape().to_vec(),
                data: v.data().to_vec(),
            },
            // detect() let only counters be absent.
            Err(_) => Tensor {
                name: spec.name,
                dtype: Dtype::I64,
                shape: vec![],
                data: 0i64.to_le_bytes().to_vec(),
            },
        })
        .collect();
    Ok(Backbone { arch, tensors })
}

/// The torchvision safetensors file (no `fc.*`).
pub fn torchvision_safetensors(backbone: &Backbone) -> Vec<u8> {
    let views = backbone.tensors.iter().map(|t| {
        let view =
            TensorView::new(t.dtype, t.shape.clone(), &t.data).expect("sizes checked on read");
        (t.name.as_str(), view)
    });
    // "format: pt" is what `safetensors.torch.save_file` writes; some loaders look for it.
    let metadata = Some(
        [("format".to_string(), "pt".to_string())]
            .into_iter()
            .collect(),
    );
    safetensors::serialize(views, &metadata).expect("in-memory tensors serialise")
}

/// The Detectron2 checkpoint pickle.
pub fn detectron2_pickle(backbone: &Backbone) -> Vec<u8> {
    let renamed: Vec<(String, &Tensor)> = backbone
        .tensors
        .iter()
        .filter(|t| in_detectron2(&t.name))
        .map(|t| (detectron2_name(&t.name), t))
        .collect();
    let model = renamed
        .iter()
        .map(|(name, t)| {
            (
                name.as_str(),
                pickle::Value::F32Array {
                    data: &t.data,
                    shape: &t.shape,
                },
            )
        })
        .collect();
    pickle::to_bytes(&pickle::Value::Dict(vec![
        ("model", pickle::Value::Dict(model)),
        ("__author__", pickle::Value::Str(AUTHOR)),
        ("matching_heuristics", pickle::Value::True),
    ]))
}

/// The `detectron2/` files (name, text). `dir` is where they will live and `weights`
/// the `.pkl` path, both as the user should see them in commands (absolute is best:
/// Detectron2 resolves `MODEL.WEIGHTS` against its own working directory).
pub fn detectron2_configs(
    arch: Arch,
    dir: &str,
    weights: &str,
) -> Result<Vec<(&'static str, String)>, ExportError> {
    if arch != Arch::ResNet50 {
        return Err(ExportError::NoConfigs(arch));
    }
    Ok(CONFIGS
        .iter()
        .map(|(name, text)| {
            let text = text
                .replace("@WEIGHTS@", &yaml_escape(weights))
                .replace("@DIR@", dir)
                .replace("@PKL@", weights);
            (*name, text)
        })
        .collect())
}

/// Escapes for a double-quoted YAML scalar.
fn yaml_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Which files to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Torchvision,
    Detectron2,
    All,
}

/// One output file, relative to the export directory.
#[derive(Clone, Debug)]
pub struct ExportFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct Export {
    pub arch: Arch,
    pub files: Vec<ExportFile>,
    /// Things the user should know that are not errors (e.g. configs not written).
    pub notes: Vec<String>,
}

/// Everything `sca export` writes, built in memory so a bad input writes nothing.
/// `out_dir` is the export directory as it should appear inside the configs.
pub fn export(
    bytes: &[u8],
    format: Format,
    expected: Option<Arch>,
    out_dir: &Path,
) -> Result<Export, ExportError> {
    let backbone = read_backbone(bytes)?;
    if let Some(expected) = expected {
        if expected != backbone.arch {
            return Err(ExportError::ArchMismatch {
                expected,
                found: backbone.arch,
            });
        }
    }
    let mut files = Vec::new();
    let mut notes = Vec::new();
    if matches!(format, Format::Torchvision | Format::All) {
        files.push(ExportFile {
            path: TORCHVISION_FILE.into(),
            bytes: torchvision_safetensors(&backbone),
        });
    }
    if matches!(format, Format::Detectron2 | Format::All) {
        files.push(ExportFile {
            path: DETECTRON2_FILE.into(),
            bytes: detectron2_pickle(&backbone),
        });
        let dir = out_dir.join(DETECTRON2_DIR).display().to_string();
        let weights = out_dir.join(DETECTRON2_FILE).display().to_string();
        match detectron2_configs(backbone.arch, &dir, &weights) {
            Ok(configs) => files.extend(configs.into_iter().map(|(name, text)| ExportFile {
                path: PathBuf::from(DETECTRON2_DIR).join(name),
                bytes: text.into_bytes(),
            })),
            Err(e @ ExportError::NoConfigs(_)) => notes.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    Ok(Export {
        arch: backbone.arch,
        files,
        notes,
    })
}
