//! The ResNets this exporter knows, as torchvision names their `state_dict` entries.
//!
//! The key lists are generated from torchvision's construction rules rather than read
//! from a file, so the crate carries no data; the tests compare them against the
//! checked-in lists in `tests/data/torchvision_keys/`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A ResNet depth, named as torchvision names its constructors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    ResNet18,
    ResNet34,
    ResNet50,
}

/// One `state_dict` entry. `shape == None` marks a BN `num_batches_tracked` counter,
/// an I64 scalar that may be absent from a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpec {
    pub name: String,
    pub shape: Option<Vec<usize>>,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::ResNet18, Arch::ResNet34, Arch::ResNet50];

    pub fn name(self) -> &'static str {
        match self {
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
            Arch::ResNet50 => "resnet50",
        }
    }

    /// Detectron2's `MODEL.RESNETS.DEPTH`.
    pub fn depth(self) -> usize {
        match self {
            Arch::ResNet18 => 18,
            Arch::ResNet34 => 34,
            Arch::ResNet50 => 50,
        }
    }

    fn blocks(self) -> [usize; 4] {
        match self {
            Arch::ResNet18 => [2, 2, 2, 2],
            Arch::ResNet34 | Arch::ResNet50 => [3, 4, 6, 3],
        }
    }

    fn bottleneck(self) -> bool {
        self == Arch::ResNet50
    }

    /// Input width of `fc` (the pooled feature).
    pub fn feature_dim(self) -> usize {
        if self.bottleneck() {
            2048
        } else {
            512
        }
    }

    /// Every key of `torchvision.models.<arch>().state_dict()` except `fc.*`, in
    /// torchvision's order (stem, then layer1..4 block by block).
    pub fn backbone_keys(self) -> Vec<KeySpec> {
        let mut keys = Vec::new();
        conv(&mut keys, "conv1", [64, 3, 7, 7]);
        bn(&mut keys, "bn1", 64);
        let expansion = if self.bottleneck() { 4 } else { 1 };
        let mut in_ch = 64;
        for (stage, &n_blocks) in self.blocks().iter().enumerate() {
            let width = 64 << stage;
            let out_ch = width * expansion;
            for block in 0..n_blocks {
                let p = format!("layer{}.{block}", stage + 1);
                if self.bottleneck() {
                    conv(&mut keys, &format!("{p}.conv1"), [width, in_ch, 1, 1]);
                    bn(&mut keys, &format!("{p}.bn1"), width);
                    conv(&mut keys, &format!("{p}.conv2"), [width, width, 3, 3]);
                    bn(&mut keys, &format!("{p}.bn2"), width);
                    conv(&mut keys, &format!("{p}.conv3"), [out_ch, width, 1, 1]);
                    bn(&mut keys, &format!("{p}.bn3"), out_ch);
                } else {
                    conv(&mut keys, &format!("{p}.conv1"), [width, in_ch, 3, 3]);
                    bn(&mut keys, &format!("{p}.bn1"), width);
                    conv(&mut keys, &format!("{p}.conv2"), [width, width, 3, 3]);
                    bn(&mut keys, &format!("{p}.bn2"), width);
                }
                // torchvision adds a projection shortcut when the stride or width changes,
                // which is only ever the first block of a stage.
                let stride = if block == 0 && stage > 0 { 2 } else { 1 };
                if stride != 1 || in_ch != out_ch {
                    conv(
                        &mut keys,
                        &format!("{p}.downsample.0"),
                        [out_ch, in_ch, 1, 1],
                    );
                    bn(&mut keys, &format!("{p}.downsample.1"), out_ch);
                }
                in_ch = out_ch;
            }
        }
        keys
    }
}

fn conv(keys: &mut Vec<KeySpec>, prefix: &str, shape: [usize; 4]) {
    keys.push(KeySpec {
        name: format!("{prefix}.weight"),
        shape: Some(shape.to_vec()),
    });
}

fn bn(keys: &mut Vec<KeySpec>, prefix: &str, ch: usize) {
    for p in ["weight", "bias", "running_mean", "running_var"] {
        keys.push(KeySpec {
            name: format!("{prefix}.{p}"),
            shape: Some(vec![ch]),
        });
    }
    keys.push(KeySpec {
        name: format!("{prefix}.num_batches_tracked"),
        shape: None,
    });
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == lower)
            .ok_or_else(|| {
                format!("unknown architecture '{s}' (expected resnet18, resnet34 or resnet50)")
            })
    }
}

/// What a file holds, reduced to what detection needs: name → (dtype, shape).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// Why a key set is not a known ResNet, against the closest candidate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mismatch {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// (key, found, expected), shapes and dtypes as text.
    pub wrong: Vec<(String, String, String)>,
}

impl Mismatch {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.wrong.is_empty()
    }

    fn problems(&self) -> usize {
        self.missing.len() + self.unexpected.len() + self.wrong.len()
    }
}

/// Compares a file's entries with one architecture. `fc.*` is accepted with any number
/// of classes (a linear-probe head, or none) as long as its input width fits.
pub fn compare(arch: Arch, entries: &BTreeMap<String, Entry>) -> Mismatch {
    let mut m = Mismatch::default();
    let specs = arch.backbone_keys();
    let known: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    for spec in &specs {
        match (entries.get(&spec.name), &spec.shape) {
            (None, Some(_)) => m.missing.push(spec.name.clone()),
            (None, None) => {} // counters are optional
            (Some(e), Some(shape)) => {
                if e.dtype != "F32" || &e.shape != shape {
                    m.wrong.push((
                        spec.name.clone(),
                        describe(&e.dtype, &e.shape),
                        describe("F32", shape),
                    ));
                }
            }
            (Some(e), None) => {
                if e.dtype != "I64" || !e.shape.is_empty() {
                    m.wrong.push((
                        spec.name.clone(),
                        describe(&e.dtype, &e.shape),
                        describe("I64", &[]),
                    ));
                }
            }
        }
    }
    let classes = entries
        .get("fc.weight")
        .and_then(|e| e.shape.first().copied());
    for (name, e) in entries {
        if known.contains(name.as_str()) {
            continue;
        }
        let fc_expected = match name.as_str() {
            "fc.weight" => Some(vec![classes.unwrap_or(0), arch.feature_dim()]),
            "fc.bias" => classes.map(|n| vec![n]),
            _ => None,
        };
        match fc_expected {
            Some(shape) if e.dtype == "F32" && e.shape == shape && shape[0] > 0 => {}
            Some(shape) => m.wrong.push((
                name.clone(),
                describe(&e.dtype, &e.shape),
                describe("F32", &shape),
            )),
            None if name == "fc.bias" => m.wrong.push((
                name.clone(),
                describe(&e.dtype, &e.shape),
                "no fc.weight beside it".into(),
            )),
            None => m.unexpected.push(name.clone()),
        }
    }
    m
}

fn describe(dtype: &str, shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("{dtype}[{}]", dims.join(", "))
}

/// The architecture whose keys the entries match exactly, or the closest one (the most
/// keys in place, then the fewest problems) and why not.
pub fn detect(entries: &BTreeMap<String, Entry>) -> Result<Arch, (Arch, Mismatch)> {
    let mut best: Option<(usize, usize, Arch, Mismatch)> = None;
    for arch in Arch::ALL {
        let m = compare(arch, entries);
        if m.is_empty() {
            return Ok(arch);
        }
        // Counters are optional, so they do not count as keys in place.
        let required = arch
            .backbone_keys()
            .iter()
            .filter(|k| k.shape.is_some())
            .count();
        let in_place = required.saturating_sub(m.missing.len() + m.wrong.len());
        let better = match &best {
            None => true,
            Some((p, q, ..)) => in_place > *p || (in_place == *p && m.problems() < *q),
        };
        if better {
            best = Some((in_place, m.problems(), arch, m));
        }
    }
    let (_, _, arch, m) = best.expect("three candidates");
    Err((arch, m))
}
