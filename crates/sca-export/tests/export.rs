//! Export of synthetic backbones built from the checked-in torchvision key lists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sca_export::{
    detectron2_configs, detectron2_name, detectron2_pickle, export, in_detectron2, pickle,
    read_backbone, torchvision_safetensors, write_atomic, Arch, Format, DETECTRON2_FILE,
    TORCHVISION_FILE,
};

// ---------------------------------------------------------------- test inputs

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// (name, shape) lines of a checked-in list; `None` for counters (empty shape field).
fn key_list(path: &str) -> Vec<(String, Option<Vec<usize>>)> {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, shape) = l.split_once(' ').unwrap_or((l, ""));
            let shape = shape.trim();
            let shape =
                (!shape.is_empty()).then(|| shape.split(',').map(|d| d.parse().unwrap()).collect());
            (name.to_string(), shape)
        })
        .collect()
}

fn torchvision_list(arch: Arch) -> Vec<(String, Option<Vec<usize>>)> {
    key_list(&format!("tests/data/torchvision_keys/{arch}.txt"))
}

#[derive(Clone)]
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// Every bit pattern is fair game (NaN payloads, -0.0, subnormals): the export must copy
/// bits, not values.
fn value_bits(key: usize, i: usize) -> u32 {
    let mut z = ((key as u64) << 40 ^ i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u32
}

/// The full torchvision state dict of `arch` (fc and counters included).
fn synthetic(arch: Arch) -> &'static [Entry] {
    static CACHE: [OnceLock<Vec<Entry>>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = Arch::ALL.iter().position(|&a| a == arch).unwrap();
    CACHE[slot].get_or_init(|| {
        torchvision_list(arch)
            .into_iter()
            .enumerate()
            .map(|(k, (name, shape))| match shape {
                Some(shape) => {
                    let n: usize = shape.iter().product();
                    let data = (0..n)
                        .flat_map(|i| value_bits(k, i).to_le_bytes())
                        .collect();
                    Entry {
                        name,
                        dtype: Dtype::F32,
                        shape,
                        data,
                    }
                }
                None => Entry {
                    name,
                    dtype: Dtype::I64,
                    shape: vec![],
                    data: (k as i64 * 100).to_le_bytes().to_vec(),
                },
            })
            .collect()
    })
}

fn to_safetensors(entries: &[Entry]) -> Vec<u8> {
    let views = entries.iter().map(|e| {
        (
            e.name.clone(),
            TensorView::new(e.dtype, e.shape.clone(), &e.data).unwrap(),
        )
    });
    safetensors::serialize(views, &None).unwrap()
}

/// A synthetic file of `arch` after `edit`.
fn file(arch: Arch, edit: impl FnOnce(&mut Vec<Entry>)) -> Vec<u8> {
    let mut entries = synthetic(arch).to_vec();
    edit(&mut entries);
    to_safetensors(&entries)
}

fn f32_entry(name: &str, shape: &[usize]) -> Entry {
    let n: usize = shape.iter().product();
    Entry {
        name: name.into(),
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        data: vec![0; 4 * n],
    }
}

fn no_fc(e: &mut Vec<Entry>) {
    e.retain(|e| !e.name.starts_with("fc."));
}
fn no_counters(e: &mut Vec<Entry>) {
    e.retain(|e| !e.name.ends_with("num_batches_tracked"));
}
/// Gives `e` a new shape, with data to match.
fn reshape(e: &mut Entry, shape: &[usize]) {
    e.shape = shape.to_vec();
    e.data = vec![0; e.dtype.size() * shape.iter().product::<usize>()];
}
fn set(name: &'static str, f: impl Fn(&mut Entry)) -> impl FnOnce(&mut Vec<Entry>) {
    move |e| f(e.iter_mut().find(|e| e.name == name).unwrap())
}

// ---------------------------------------------------------------- key lists

#[test]
fn generated_keys_match_checked_in_torchvision_lists() {
    for arch in Arch::ALL {
        let got: Vec<_> = arch
            .backbone_keys()
            .into_iter()
            .map(|k| (k.name, k.shape))
            .collect();
        let want: Vec<_> = torchvision_list(arch)
            .into_iter()
            .filter(|(n, _)| !n.starts_with("fc."))
            .collect();
        assert_eq!(got, want, "{arch}");
    }
    // The headline count: torchvision's resnet50 state dict has 320 entries.
    assert_eq!(torchvision_list(Arch::ResNet50).len(), 320);
    assert_eq!(Arch::ResNet50.backbone_keys().len(), 318);
}

#[test]
fn detectron2_names_match_checked_in_list() {
    let got: Vec<_> = Arch::ResNet50
        .backbone_keys()
        .into_iter()
        .filter(|k| in_detectron2(&k.name))
        .map(|k| (detectron2_name(&k.name), k.shape))
        .collect();
    let want = key_list("tests/data/detectron2_keys/resnet50.txt");
    assert_eq!(want.len(), 265);
    assert_eq!(got, want);
}

#[test]
fn detectron2_renaming() {
    fn check(torchvision: &str, detectron2: &str) {
        assert_eq!(detectron2_name(torchvision), detectron2, "{torchvision}");
    }
    check("conv1.weight", "stem.conv1.weight");
    check("bn1.weight", "stem.conv1.norm.weight");
    check("bn1.running_mean", "stem.conv1.norm.running_mean");
    check("layer1.0.conv1.weight", "res2.0.conv1.weight");
    check("layer1.0.bn1.weight", "res2.0.conv1.norm.weight");
    check("layer1.2.bn3.running_var", "res2.2.conv3.norm.running_var");
    check("layer1.0.downsample.0.weight", "res2.0.shortcut.weight");
    check("layer1.0.downsample.1.bias", "res2.0.shortcut.norm.bias");
    check(
        "layer2.0.downsample.1.running_mean",
        "res3.0.shortcut.norm.running_mean",
    );
    check("layer3.5.conv2.weight", "res4.5.conv2.weight");
    check("layer4.2.bn2.bias", "res5.2.conv2.norm.bias");
}

#[test]
fn which_keys_go_to_detectron2() {
    fn check(key: &str, expected: bool) {
        assert_eq!(in_detectron2(key), expected, "{key}");
    }
    check("conv1.weight", true);
    check("bn1.running_var", true);
    check("layer4.2.downsample.1.weight", true);
    check("bn1.num_batches_tracked", false);
    check("layer1.0.downsample.1.num_batches_tracked", false);
    check("fc.weight", false);
    check("fc.bias", false);
}

#[test]
fn arch_names() {
    fn check(text: &str, expected: Result<Arch, &str>) {
        assert_eq!(
            text.parse::<Arch>()
                .map_err(|e| e.contains(expected.err().unwrap_or(""))),
            expected.map_err(|_| true)
        );
    }
    check("resnet18", Ok(Arch::ResNet18));
    check("ResNet34", Ok(Arch::ResNet34));
    check("resnet50", Ok(Arch::ResNet50));
    check("resnet101", Err("unknown architecture 'resnet101'"));
    assert_eq!(Arch::ResNet50.to_string(), "resnet50");
    assert_eq!(Arch::ResNet34.depth(), 34);
}

// ---------------------------------------------------------------- detection and refusals

/// `Ok(arch)` or the error message must contain every listed fragment.
fn check_read(bytes: Vec<u8>, expected: Result<Arch, &[&str]>) {
    match (read_backbone(&bytes), expected) {
        (Ok(b), Ok(arch)) => assert_eq!(b.arch, arch),
        (Err(e), Err(fragments)) => {
            let msg = e.to_string();
            for f in fragments {
                assert!(msg.contains(f), "message lacks {f:?}:\n{msg}");
            }
        }
        (got, want) => panic!(
            "got {:?}, want {want:?}",
            got.map(|b| b.arch).map_err(|e| e.to_string())
        ),
    }
}

#[test]
fn detects_known_resnets() {
    use Arch::*;
    check_read(file(ResNet18, |_| {}), Ok(ResNet18));
    check_read(file(ResNet34, |_| {}), Ok(ResNet34));
    check_read(file(ResNet50, |_| {}), Ok(ResNet50));
    check_read(file(ResNet50, no_fc), Ok(ResNet50));
    check_read(file(ResNet18, no_counters), Ok(ResNet18));
    check_read(
        file(ResNet50, |e| (no_fc(e), no_counters(e)).1),
        Ok(ResNet50),
    );
    check_read(
        file(ResNet50, |e| e.truncate(300)),
        Err(&[
            "closest is resnet50",
            "missing keys: layer4.2.conv1.weight, layer4.2.bn1.weight,",
            "(15 in all)",
        ]),
    );
    // A linear-probe head with another class count is still a backbone.
    check_read(
        file(ResNet34, |e| {
            no_fc(e);
            e.push(f32_entry("fc.weight", &[10, 512]));
            e.push(f32_entry("fc.bias", &[10]));
        }),
        Ok(ResNet34),
    );
}

#[test]
fn refuses_what_it_does_not_know() {
    use Arch::*;
    let keyed = |arch, edit: fn(&mut Vec<Entry>)| file(arch, edit);
    check_read(
        keyed(ResNet50, |e| {
            e.retain(|e| e.name != "layer2.0.conv1.weight")
        }),
        Err(&[
            "not a ResNet-18/34/50",
            "closest is resnet50",
            "missing keys: layer2.0.conv1.weight",
        ]),
    );
    check_read(
        keyed(ResNet18, |e| {
            e.push(f32_entry("attention.conv.weight", &[1, 512, 1, 1]))
        }),
        Err(&[
            "closest is resnet18",
            "unexpected keys: attention.conv.weight",
        ]),
    );
    check_read(
        file(
            ResNet50,
            set("layer1.0.conv1.weight", |e| reshape(e, &[64, 64, 4, 1])),
        ),
        Err(&["layer1.0.conv1.weight is F32[64, 64, 4, 1], expected F32[64, 64, 1, 1]"]),
    );
    check_read(
        file(
            ResNet18,
            set("layer3.1.bn2.bias", |e| {
                e.dtype = Dtype::F16;
                reshape(e, &[256]);
            }),
        ),
        Err(&["layer3.1.bn2.bias is F16[256], expected F32[256]"]),
    );
    check_read(
        file(
            ResNet18,
            set("bn1.num_batches_tracked", |e| {
                e.dtype = Dtype::F32;
                reshape(e, &[2]);
            }),
        ),
        Err(&["bn1.num_batches_tracked is F32[2], expected I64[]"]),
    );
    check_read(
        file(ResNet50, set("fc.weight", |e| reshape(e, &[1000, 512]))),
        Err(&["wrong shape or dtype: fc.weight is F32[1000, 512], expected F32[1000, 2048]"]),
    );
    check_read(
        keyed(ResNet18, |e| e.retain(|e| e.name != "fc.weight")),
        Err(&["fc.bias is F32[1000], expected no fc.weight beside it"]),
    );
    check_read(
        keyed(ResNet50, |e| {
            e.iter_mut()
                .for_each(|e| e.name = format!("backbone.{}", e.name))
        }),
        Err(&[
            "closest is resnet50",
            "unexpected keys: backbone.bn1.bias",
            "... (320 in all)",
            "prefixed with 'backbone.'",
        ]),
    );
    // A whole-model checkpoint: the backbone under a prefix, beside a head.
    check_read(
        keyed(ResNet18, |e| {
            e.iter_mut()
                .for_each(|e| e.name = format!("module.backbone.{}", e.name));
            e.push(f32_entry("module.head.weight", &[128, 512]));
        }),
        Err(&[
            "closest is resnet18",
            "unexpected keys: module.backbone.bn1.bias",
            "prefixed with 'module.backbone.'",
        ]),
    );
    check_read(
        file(
            ResNet18,
            set("conv1.weight", |e| reshape(e, &[64, 3, 3, 3])),
        ),
        Err(&["small-image", "[64, 3, 3, 3]"]),
    );
    check_read(
        keyed(ResNet34, |e| {
            e.iter_mut()
                .for_each(|e| e.name = format!("encoder.{}", e.name));
            e.push(f32_entry("head.weight", &[128, 512]));
        }),
        Err(&["closest is resnet34", "prefixed with 'encoder.'"]),
    );
    // Half a ResNet-50 is still closest to a ResNet-50.
    check_read(
        keyed(ResNet50, |e| e.truncate(160)),
        Err(&[
            "closest is resnet50",
            "missing keys: layer3.0.bn3.running_var, layer3.0.downsample.0.weight,",
            "(131 in all)",
        ]),
    );
    // ResNet-101: layer3 has 23 blocks; closest is ResNet-50 with layer3.6.. left over.
    check_read(
        keyed(ResNet50, |e| {
            let extra: Vec<Entry> = e
                .iter()
                .filter(|e| e.name.starts_with("layer3.5."))
                .map(|x| Entry {
                    name: x.name.replace("layer3.5.", "layer3.6."),
                    ..x.clone()
                })
                .collect();
            e.extend(extra);
        }),
        Err(&["closest is resnet50", "unexpected keys: layer3.6.bn1.bias"]),
    );
}

#[test]
fn refuses_unreadable_files() {
    let whole = file(Arch::ResNet18, |_| {});
    check_read(
        vec![],
        Err(&["not a readable safetensors file", "truncated"]),
    );
    check_read(
        b"PK\x03\x04 a zip file".to_vec(),
        Err(&["not a readable safetensors file"]),
    );
    check_read(
        whole[..whole.len() - 1].to_vec(),
        Err(&["not a readable safetensors file (MetadataIncompleteBuffer)"]),
    );
    check_read(
        whole[..100].to_vec(),
        Err(&["not a readable safetensors file"]),
    );
}

#[test]
fn checks_the_arch_that_was_asked_for() {
    fn check(asked: Option<Arch>, expected: Result<Arch, &str>) {
        let got = export(
            &file(Arch::ResNet18, |_| {}),
            Format::Torchvision,
            asked,
            Path::new("out"),
        );
        assert_eq!(
            got.map(|e| e.arch).map_err(|e| e.to_string()),
            expected.map_err(String::from)
        );
    }
    check(None, Ok(Arch::ResNet18));
    check(Some(Arch::ResNet18), Ok(Arch::ResNet18));
    check(
        Some(Arch::ResNet50),
        Err("the weights are a resnet18, not the resnet50 that was asked for"),
    );
}

// ---------------------------------------------------------------- torchvision file

/// name → (dtype, shape, bytes) of a safetensors file.
fn parse(bytes: &[u8]) -> BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

#[test]
fn torchvision_file_is_the_source_minus_fc_bit_for_bit() {
    for arch in Arch::ALL {
        let source = synthetic(arch);
        let out = parse(&torchvision_safetensors(
            &read_backbone(&to_safetensors(source)).unwrap(),
        ));
        let want: BTreeMap<_, _> = source
            .iter()
            .filter(|e| !e.name.starts_with("fc."))
            .map(|e| (e.name.clone(), (e.dtype, e.shape.clone(), e.data.clone())))
            .collect();
        assert_eq!(out.len(), torchvision_list(arch).len() - 2, "{arch}");
        assert!(
            out == want,
            "{arch}: exported tensors differ from the source"
        );
    }
}

#[test]
fn missing_counters_are_written_as_zero() {
    let out = parse(&torchvision_safetensors(
        &read_backbone(&file(Arch::ResNet50, no_counters)).unwrap(),
    ));
    let counters: Vec<_> = out
        .iter()
        .filter(|(k, _)| k.ends_with("num_batches_tracked"))
        .collect();
    assert_eq!(counters.len(), 53);
    for (k, v) in counters {
        assert_eq!(v, &(Dtype::I64, vec![], 0i64.to_le_bytes().to_vec()), "{k}");
    }
    let st_bytes = torchvision_safetensors(&read_backbone(&file(Arch::ResNet18, |_| {})).unwrap());
    let (_, meta) = SafeTensors::read_metadata(&st_bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
}

// ---------------------------------------------------------------- pickle

#[test]
fn pickle_bytes_of_a_tiny_checkpoint() {
    let data: Vec<u8> = [1.0f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let shape = [1usize, 2];
    let bytes = pickle::to_bytes(&pickle::Value::Dict(vec![
        (
            "model",
            pickle::Value::Dict(vec![
                (
                    "a",
                    pickle::Value::F32Array {
                        data: &data,
                        shape: &shape,
                    },
                ),
                (
                    "b",
                    pickle::Value::F32Array {
                        data: &data,
                        shape: &[2],
                    },
                ),
            ]),
        ),
        ("__author__", pickle::Value::Str("sca")),
        ("matching_heuristics", pickle::Value::True),
    ]));
    let mut want: Vec<u8> = vec![0x80, 3, b'}', b'(']; // PROTO 3, EMPTY_DICT, MARK
    want.extend(b"X\x05\0\0\0model}(X\x01\0\0\0a");
    want.extend(b"cnumpy\nreshape\nq\x00cnumpy\nfrombuffer\nq\x01cbuiltins\nbytearray\nq\x02");
    want.extend(b"B\x08\0\0\0");
    want.extend(&data);
    want.extend(b"\x85RX\x03\0\0\0<f4\x86R(K\x01K\x02t\x86R");
    want.extend(b"X\x01\0\0\0b");
    want.extend(b"h\x00h\x01h\x02B\x08\0\0\0"); // the globals again, from the memo
    want.extend(&data);
    want.extend(b"\x85RX\x03\0\0\0<f4\x86R(K\x02t\x86Ru");
    want.extend(b"X\x0a\0\0\0__author__X\x03\0\0\0sca");
    want.extend(b"X\x13\0\0\0matching_heuristics\x88u.");
    assert_eq!(bytes, want);
}

#[test]
fn pickle_dimensions_above_255_use_four_byte_ints() {
    let data = vec![0u8; 4 * 2048];
    let bytes = pickle::to_bytes(&pickle::Value::F32Array {
        data: &data,
        shape: &[2048, 1],
    });
    let tail = &bytes[bytes.len() - 12..];
    assert_eq!(tail, b"(J\x00\x08\x00\x00K\x01t\x86R.");
}

#[test]
fn pickle_holds_each_tensor_in_torchvision_order() {
    let backbone = read_backbone(&file(Arch::ResNet18, |_| {})).unwrap();
    let bytes = detectron2_pickle(&backbone);
    let mut at = 0;
    let mut count = 0;
    for t in backbone.tensors.iter().filter(|t| in_detectron2(&t.name)) {
        let name = detectron2_name(&t.name);
        let mut key = vec![b'X'];
        key.extend((name.len() as u32).to_le_bytes());
        key.extend(name.as_bytes());
        let key_at = find(&bytes[at..], &key)
            .unwrap_or_else(|| panic!("{name} missing or out of order"))
            + at;
        let mut payload = vec![b'B'];
        payload.extend((t.data.len() as u32).to_le_bytes());
        payload.extend(&t.data);
        let data_at = find(&bytes[key_at..], &payload)
            .unwrap_or_else(|| panic!("{name}: data not found"))
            + key_at;
        // Only the numpy callables (a GLOBAL the first time, a memo GET after) lie between.
        assert!(data_at - key_at - key.len() <= 60, "{name}");
        at = data_at + payload.len();
        count += 1;
    }
    assert_eq!(count, 100); // resnet18: 20 convs + 20 BNs × 4
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------- export and configs

fn names(e: &sca_export::Export) -> Vec<String> {
    e.files
        .iter()
        .map(|f| f.path.display().to_string())
        .collect()
}

#[test]
fn files_per_format() {
    fn check(arch: Arch, format: Format, files: &[&str], notes: &[&str]) {
        let e = export(
            &file(arch, |_| {}),
            format,
            None,
            Path::new("/runs/x/export"),
        )
        .unwrap();
        assert_eq!(names(&e), files, "{arch} {format:?}");
        assert_eq!(e.notes.len(), notes.len());
        for (n, want) in e.notes.iter().zip(notes) {
            assert!(n.contains(want), "{n}");
        }
    }
    let d2 = [
        "detectron2/Base-RCNN-C4-BN.yaml",
        "detectron2/pascal_voc_R_50_C4_24k.yaml",
        "detectron2/coco_R_50_C4_2x.yaml",
        "detectron2/README.md",
    ];
    let all: Vec<&str> = [TORCHVISION_FILE, DETECTRON2_FILE]
        .into_iter()
        .chain(d2)
        .collect();
    check(Arch::ResNet50, Format::All, &all, &[]);
    check(
        Arch::ResNet50,
        Format::Torchvision,
        &[TORCHVISION_FILE],
        &[],
    );
    check(Arch::ResNet50, Format::Detectron2, &all[1..], &[]);
    check(
        Arch::ResNet18,
        Format::All,
        &[TORCHVISION_FILE, DETECTRON2_FILE],
        &["no Detectron2 configs for resnet18"],
    );
    check(
        Arch::ResNet34,
        Format::Detectron2,
        &[DETECTRON2_FILE],
        &["no Detectron2 configs for resnet34"],
    );
}

fn config(name: &str) -> String {
    let configs = detectron2_configs(
        Arch::ResNet50,
        "/runs/x/export/detectron2",
        "/runs/x/export/backbone_detectron2.pkl",
    )
    .unwrap();
    configs.into_iter().find(|(n, _)| *n == name).unwrap().1
}

#[test]
fn config_settings() {
    fn check(file: &str, line: &str) {
        let text = config(file);
        assert!(
            text.lines().any(|l| l.trim() == line),
            "{file} lacks `{line}`:\n{text}"
        );
    }
    let base = "Base-RCNN-C4-BN.yaml";
    check(base, r#"WEIGHTS: "/runs/x/export/backbone_detectron2.pkl""#);
    check(base, "PIXEL_MEAN: [123.675, 116.280, 103.530]");
    check(base, "PIXEL_STD: [58.395, 57.120, 57.375]");
    check(base, r#"FORMAT: "RGB""#);
    check(base, "STRIDE_IN_1X1: False");
    check(base, "DEPTH: 50");
    check(base, r#"NAME: "Res5ROIHeads""#);
    check(base, "FREEZE_AT: 0");
    check(base, "IMS_PER_BATCH: 16");
    check(base, "BASE_LR: 0.02");
    let voc = "pascal_voc_R_50_C4_24k.yaml";
    check(voc, r#"_BASE_: "Base-RCNN-C4-BN.yaml""#);
    check(voc, "MASK_ON: False");
    check(voc, "NUM_CLASSES: 20");
    check(voc, "MIN_SIZE_TEST: 800");
    check(voc, r#"TRAIN: ("voc_2007_trainval", "voc_2012_trainval")"#);
    check(voc, r#"TEST: ("voc_2007_test",)"#);
    check(voc, "STEPS: (18000, 22000)");
    check(voc, "MAX_ITER: 24000");
    check(voc, "WARMUP_ITERS: 100");
    let coco = "coco_R_50_C4_2x.yaml";
    check(coco, r#"_BASE_: "Base-RCNN-C4-BN.yaml""#);
    check(coco, "MASK_ON: True");
    check(coco, "MIN_SIZE_TRAIN: (640, 672, 704, 736, 768, 800)");
    check(coco, r#"TRAIN: ("coco_2017_train",)"#);
    check(coco, r#"TEST: ("coco_2017_val",)"#);
    check(coco, "STEPS: (120000, 160000)");
    check(coco, "MAX_ITER: 180000");
    let readme = "README.md";
    check(readme, "export DETECTRON2_DATASETS=/path/to/datasets");
    check(readme, "python tools/train_net.py --num-gpus 8 \\");
    check(
        readme,
        r#"--config-file "/runs/x/export/detectron2/pascal_voc_R_50_C4_24k.yaml" \"#,
    );
    check(
        readme,
        r#"--config-file "/runs/x/export/detectron2/coco_R_50_C4_2x.yaml" \"#,
    );
}

#[test]
fn config_norms_and_scales() {
    let base = config("Base-RCNN-C4-BN.yaml");
    // SyncBN in the backbone (RESNETS) and the box head.
    let norms: Vec<&str> = base
        .lines()
        .filter(|l| l.trim() == r#"NORM: "SyncBN""#)
        .collect();
    assert_eq!(norms.len(), 2);
    let at = |key: &str| base.find(key).unwrap();
    assert!(at("RESNETS:") < at("NORM:") && at("ROI_BOX_HEAD:") < base.rfind("NORM:").unwrap());
    // VOC train scales: 480..=800 in steps of 32.
    let voc = config("pascal_voc_R_50_C4_24k.yaml");
    let line = voc
        .lines()
        .find(|l| l.trim().starts_with("MIN_SIZE_TRAIN:"))
        .unwrap();
    let inner = line.split_once('(').unwrap().1.trim_end_matches(')');
    let sizes: Vec<usize> = inner
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    assert_eq!(sizes, (480..=800).step_by(32).collect::<Vec<_>>());
    for (name, text) in detectron2_configs(Arch::ResNet50, "d", "w").unwrap() {
        assert!(!text.contains('@'), "{name} keeps a placeholder");
    }
}

#[test]
fn config_paths_are_quoted_for_yaml() {
    let configs = detectron2_configs(Arch::ResNet50, r"C:\x", r#"C:\my "runs"\b.pkl"#).unwrap();
    assert!(configs[0]
        .1
        .contains(r#"WEIGHTS: "C:\\my \"runs\"\\b.pkl""#));
}

// ---------------------------------------------------------------- atomic writes

#[test]
fn atomic_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.bin");
    write_atomic(&path, b"first").unwrap();
    write_atomic(&path, b"second").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second");
    // A target that cannot be replaced: the directory stays as it was, no temp file left.
    let blocked = dir.path().join("blocked");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("inside"), b"keep").unwrap();
    assert!(write_atomic(&blocked, b"x").is_err());
    assert_eq!(std::fs::read(blocked.join("inside")).unwrap(), b"keep");
    assert!(write_atomic(&dir.path().join("no/such/dir/f"), b"x").is_err());
    let mut listing: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listing.sort();
    assert_eq!(listing, ["a.bin", "blocked"]);
}

// ---------------------------------------------------------------- real Python

/// The reason Python checks cannot run here, if any.
fn python_missing() -> Option<String> {
    match Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
    {
        Err(e) => Some(format!("python3 not runnable ({e})")),
        Ok(o) if !o.status.success() => Some("numpy is not installed for python3".into()),
        Ok(_) => None,
    }
}

fn python(args: &[&str]) -> (bool, String) {
    let o = Command::new("python3").args(args).output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Writes a full ResNet-50 export and returns its directory.
fn write_export(dir: &Path) {
    let e = export(&file(Arch::ResNet50, |_| {}), Format::All, None, dir).unwrap();
    for f in &e.files {
        let path = dir.join(&f.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        write_atomic(&path, &f.bytes).unwrap();
    }
}

#[test]
fn python_loads_the_export() {
    if let Some(why) = python_missing() {
        println!("skipped: Python checks of the export: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_export(dir.path());
    let checker = repo_root().join("tests/python/check_export.py");
    let (ok, out) = python(&[checker.to_str().unwrap(), dir.path().to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("ok: 265 arrays in backbone_detectron2.pkl equal backbone_torchvision.safetensors bit for bit"), "{out}");
    assert!(out.contains("318 torchvision keys"), "{out}");

    // Values against this side's source, not only against our own safetensors writer.
    let source = synthetic(Arch::ResNet50);
    let probe = |name: &str, i: usize| {
        let k = source.iter().position(|e| e.name == name).unwrap();
        format!("{:08x}", value_bits(k, i))
    };
    let script = r#"
import pickle, sys, numpy as np
d = pickle.load(open(sys.argv[1], "rb"), encoding="latin1")
m = d["model"]
a, b = m["stem.conv1.weight"], m["res5.2.conv3.norm.running_var"]
print(d["__author__"], d["matching_heuristics"] is True, len(m), next(iter(m)))
print(a.shape, a.dtype, a.flags.writeable, a.flags.c_contiguous)
print("%08x %08x %08x" % (a.view(np.uint32)[0, 0, 0, 0], a.view(np.uint32)[63, 2, 6, 6], b.view(np.uint32)[-1]))
"#;
    let pkl = dir.path().join(DETECTRON2_FILE);
    let (ok, out) = python(&["-c", script, pkl.to_str().unwrap()]);
    assert!(ok, "{out}");
    let want = format!(
        "sca True 265 stem.conv1.weight\n(64, 3, 7, 7) float32 True True\n{} {} {}\n",
        probe("conv1.weight", 0),
        probe("conv1.weight", 64 * 147 - 1),
        probe("layer4.2.bn3.running_var", 2047),
    );
    assert_eq!(out, want);
}

#[test]
fn python_checker_catches_a_changed_value() {
    if let Some(why) = python_missing() {
        println!("skipped: Python checks of the export: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_export(dir.path());
    let tv = dir.path().join(TORCHVISION_FILE);
    let mut bytes = std::fs::read(&tv).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&tv, bytes).unwrap();
    let checker = repo_root().join("tests/python/check_export.py");
    let (ok, out) = python(&[checker.to_str().unwrap(), dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains("FAIL:") && out.contains("differs from"),
        "{out}"
    );
}

#[test]
fn python_parses_the_configs() {
    // PyYAML only: Detectron2 reads its configs with it.
    match Command::new("python3").args(["-c", "import yaml"]).output() {
        Err(e) => {
            return println!("skipped: YAML check of the configs: python3 not runnable ({e})")
        }
        Ok(o) if !o.status.success() => {
            return println!("skipped: YAML check of the configs: PyYAML is not installed")
        }
        Ok(_) => {}
    }
    let dir = tempfile::tempdir().unwrap();
    write_export(dir.path());
    let script = r#"
import ast, sys, yaml
base = yaml.safe_load(open(sys.argv[1] + "/Base-RCNN-C4-BN.yaml"))
voc = yaml.safe_load(open(sys.argv[1] + "/pascal_voc_R_50_C4_24k.yaml"))
coco = yaml.safe_load(open(sys.argv[1] + "/coco_R_50_C4_2x.yaml"))
print(base["MODEL"]["WEIGHTS"].endswith("/backbone_detectron2.pkl"), base["MODEL"]["RESNETS"], base["MODEL"]["ROI_BOX_HEAD"])
print(ast.literal_eval(voc["INPUT"]["MIN_SIZE_TRAIN"])[::5], ast.literal_eval(voc["DATASETS"]["TRAIN"]), voc["SOLVER"])
print(coco["MODEL"], ast.literal_eval(coco["SOLVER"]["STEPS"]))
"#;
    let d2 = dir.path().join("detectron2");
    let (ok, out) = python(&["-c", script, d2.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert_eq!(
        out,
        "True {'DEPTH': 50, 'STRIDE_IN_1X1': False, 'NORM': 'SyncBN'} {'NORM': 'SyncBN'}\n\
         (480, 640, 800) ('voc_2007_trainval', 'voc_2012_trainval') {'STEPS': '(18000, 22000)', 'MAX_ITER': 24000, 'WARMUP_ITERS': 100}\n\
         {'MASK_ON': True} (120000, 160000)\n"
    );
}
