//! Backbone shapes, parameter counts and torchvision key compatibility.

use std::collections::BTreeMap;

use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor, TensorData};
use sca_backbone::{Arch, ResNet, ResNetConfig, WeightsError};

type B = Flex;

fn model(arch: Arch, small_stem: bool, classes: Option<usize>) -> ResNet<B> {
    ResNetConfig::new(arch).with_small_stem(small_stem).with_num_classes(classes).init(&Default::default())
}

/// The checked-in torchvision key list: (key, shape), `num_batches_tracked` included.
fn torchvision_keys(arch: Arch) -> Vec<(String, Vec<usize>)> {
    let path = format!("{}/../../tests/data/torchvision_keys/{}.txt", env!("CARGO_MANIFEST_DIR"), arch.name());
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (k, s) = l.split_once(' ').unwrap_or((l, ""));
            let shape = s.split(',').filter(|d| !d.trim().is_empty()).map(|d| d.trim().parse().unwrap()).collect();
            (k.to_string(), shape)
        })
        .collect()
}

#[test]
fn parameter_counts_match_torchvision() {
    let check = |arch, expected: usize| assert_eq!(model(arch, false, Some(1000)).num_params(), expected, "{arch}");
    check(Arch::ResNet18, 11_689_512);
    check(Arch::ResNet34, 21_797_672);
    check(Arch::ResNet50, 25_557_032);
}

#[test]
fn keys_and_shapes_match_torchvision_in_order() {
    for arch in Arch::ALL {
        let expected: Vec<_> = torchvision_keys(arch).into_iter().filter(|(k, _)| !k.ends_with("num_batches_tracked")).collect();
        assert_eq!(model(arch, false, Some(1000)).expected_keys(), expected, "{arch}");
    }
}

#[test]
fn saved_file_has_exactly_the_torchvision_state_dict() {
    // Counters included, so PyTorch's strict load_state_dict accepts it.
    for arch in [Arch::ResNet18, Arch::ResNet50] {
        let bytes = model(arch, false, Some(1000)).to_safetensors();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut got: Vec<(String, Vec<usize>)> = st.tensors().into_iter().map(|(k, v)| (k, v.shape().to_vec())).collect();
        let mut want = torchvision_keys(arch);
        got.sort();
        want.sort();
        assert_eq!(got, want, "{arch}");
    }
}

fn stage_dims(arch: Arch, small: bool, side: usize) -> Vec<[usize; 4]> {
    let m = model(arch, small, None);
    let x = Tensor::<B, 4>::zeros([2, 3, side, side], &Default::default());
    m.forward_stages(x).to_array().iter().map(|t| t.dims()).collect()
}

#[test]
fn stage_shapes_at_224_and_32() {
    let check = |arch, small, side, want: [[usize; 4]; 4]| assert_eq!(stage_dims(arch, small, side), want.to_vec(), "{arch} {small} {side}");
    check(Arch::ResNet50, false, 224, [[2, 256, 56, 56], [2, 512, 28, 28], [2, 1024, 14, 14], [2, 2048, 7, 7]]);
    check(Arch::ResNet18, false, 224, [[2, 64, 56, 56], [2, 128, 28, 28], [2, 256, 14, 14], [2, 512, 7, 7]]);
    check(Arch::ResNet18, true, 32, [[2, 64, 32, 32], [2, 128, 16, 16], [2, 256, 8, 8], [2, 512, 4, 4]]);
    check(Arch::ResNet50, true, 32, [[2, 256, 32, 32], [2, 512, 16, 16], [2, 1024, 8, 8], [2, 2048, 4, 4]]);
    check(Arch::ResNet34, false, 32, [[2, 64, 8, 8], [2, 128, 4, 4], [2, 256, 2, 2], [2, 512, 1, 1]]);
}

#[test]
fn conv_layers_list_every_convolution_with_the_shapes_a_forward_pass_gives_it() {
    let m = model(Arch::ResNet50, false, None);
    let layers = m.conv_layers([224, 224]);
    // Stem, 16 bottlenecks of three, four projection shortcuts.
    assert_eq!(layers.len(), 1 + 16 * 3 + 4);
    assert_eq!((layers[0].name.as_str(), layers[0].input, layers[0].weight), ("conv1", [3, 224, 224], [64, 3, 7, 7]));
    assert_eq!((layers[0].options.stride, layers[0].options.padding), ([2, 2], [3, 3]));
    let find = |name: &str| layers.iter().find(|l| l.name == name).unwrap_or_else(|| panic!("{name}"));
    // After the stem and max pool: 56 px; the stride sits on layer2's 3×3 (v1.5).
    assert_eq!(find("layer1.0.downsample.0").input, [64, 56, 56]);
    assert_eq!(find("layer2.0.conv2").input, [128, 56, 56]);
    assert_eq!(find("layer2.0.conv2").output(), [128, 28, 28]);
    assert_eq!(find("layer2.0.downsample.0").options.stride, [2, 2]);
    assert_eq!(find("layer4.2.conv3").output(), [2048, 7, 7]);
    // 23 distinct convolutions (by input, weight and options): 1 stem + 4 in layer1 (its
    // shortcut has conv3's shape) + 6 in each later stage.
    let mut distinct: Vec<_> = layers.iter().map(|l| format!("{:?} {:?} {:?} {:?}", l.input, l.weight, l.options.stride, l.options.padding)).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 23);

    // Each stage's first input is the previous stage's output in a real forward pass.
    for (arch, small, side) in [(Arch::ResNet50, false, 64), (Arch::ResNet18, true, 32)] {
        let m = model(arch, small, None);
        let layers = m.conv_layers([side, side]);
        let stages = stage_dims(arch, small, side);
        for (i, stage) in stages.iter().enumerate() {
            let [_, c, h, w] = *stage;
            if i < 3 {
                assert_eq!(layers.iter().find(|l| l.name == format!("layer{}.0.conv1", i + 2)).unwrap().input, [c, h, w], "{arch} stage {}", i + 2);
            } else {
                assert_eq!(layers.last().unwrap().output(), [c, h, w], "{arch} last");
            }
        }
    }
}

/// A model whose BN statistics are not the defaults, so a round trip that dropped them
/// would show.
fn perturbed(arch: Arch, classes: Option<usize>) -> ResNet<B> {
    let m = model(arch, true, classes);
    let named: BTreeMap<String, TensorData> = m
        .named_tensors()
        .into_iter()
        .map(|(k, d)| {
            let shape = d.shape.clone();
            let t = Tensor::<B, 1>::random([shape.iter().product::<usize>()], Distribution::Uniform(0.5, 1.5), &Default::default());
            (k, t.into_data().convert::<f32>().to_owned_with_shape(shape))
        })
        .collect();
    m.load_named(named).unwrap().0
}

trait WithShape {
    fn to_owned_with_shape(self, shape: burn::tensor::Shape) -> TensorData;
}
impl WithShape for TensorData {
    fn to_owned_with_shape(self, shape: burn::tensor::Shape) -> TensorData {
        TensorData::new(self.to_vec::<f32>().unwrap(), shape)
    }
}

#[test]
fn save_then_load_is_bit_identical() {
    let a = perturbed(Arch::ResNet18, Some(10));
    let bytes = a.to_safetensors();
    let (b, report) = model(Arch::ResNet18, true, Some(10)).load_safetensors(&bytes).unwrap();
    assert_eq!(report.ignored.len(), 20, "the 20 BN counters are skipped");
    for ((ka, ta), (kb, tb)) in a.named_tensors().into_iter().zip(b.named_tensors()) {
        assert_eq!(ka, kb);
        assert_eq!(ta.to_vec::<f32>().unwrap(), tb.to_vec::<f32>().unwrap(), "{ka}");
    }
    let x = Tensor::<B, 4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &Default::default());
    let (ya, yb) = (a.forward(x.clone()).into_data(), b.forward(x).into_data());
    assert_eq!(ya.to_vec::<f32>().unwrap(), yb.to_vec::<f32>().unwrap());
}

#[test]
fn fc_transposes_to_torchvision_layout() {
    let m = perturbed(Arch::ResNet18, Some(3));
    let named: BTreeMap<_, _> = m.named_tensors().into_iter().collect();
    let w = named["fc.weight"].clone();
    assert_eq!(w.shape.as_slice(), &[3, 512]);
    let burn_w = m.fc.as_ref().unwrap().weight.val().into_data().to_vec::<f32>().unwrap(); // [512, 3]
    let tv = w.to_vec::<f32>().unwrap();
    for (o, i) in [(0usize, 0usize), (2, 511), (1, 7)] {
        assert_eq!(tv[o * 512 + i], burn_w[i * 3 + o]);
    }
}

fn load_error(edit: impl FnOnce(&mut BTreeMap<String, TensorData>)) -> String {
    let mut named: BTreeMap<_, _> = model(Arch::ResNet18, true, None).named_tensors().into_iter().collect();
    edit(&mut named);
    match model(Arch::ResNet18, true, None).load_named(named) {
        Err(e @ WeightsError::Mismatch { .. }) => e.to_string(),
        other => panic!("expected a mismatch, got {:?}", other.map(|(_, r)| r)),
    }
}

#[test]
fn bad_files_name_the_key() {
    let msg = load_error(|m| {
        m.remove("layer3.1.bn2.running_var");
    });
    assert!(msg.contains("missing keys (1): layer3.1.bn2.running_var"), "{msg}");
    let msg = load_error(|m| {
        m.insert("layer2.0.conv1.weight".into(), TensorData::new(vec![0f32; 64 * 64 * 9], [64, 64, 3, 3].to_vec()));
    });
    assert!(msg.contains("shape mismatches (1): layer2.0.conv1.weight (file [64, 64, 3, 3], model [128, 64, 3, 3])"), "{msg}");
    let msg = load_error(|m| {
        m.insert("layer5.0.conv1.weight".into(), TensorData::new(vec![0f32; 1], [1].to_vec()));
    });
    assert!(msg.contains("unexpected keys (1): layer5.0.conv1.weight"), "{msg}");
}

#[test]
fn fc_in_file_is_ignored_by_a_backbone_without_fc() {
    let bytes = model(Arch::ResNet18, false, Some(1000)).to_safetensors();
    let (_, report) = model(Arch::ResNet18, false, None).load_safetensors(&bytes).unwrap();
    assert!(report.ignored.contains(&"fc.weight".to_string()) && report.ignored.contains(&"fc.bias".to_string()));
}

#[test]
fn truncated_file_is_a_format_error() {
    let bytes = model(Arch::ResNet18, true, None).to_safetensors();
    let err = model(Arch::ResNet18, true, None).load_safetensors(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(matches!(err, WeightsError::Format(_)), "{err}");
}

#[test]
fn zero_init_residual_zeroes_the_last_bn_of_each_block() {
    let m = ResNetConfig::new(Arch::ResNet50).with_zero_init_residual(true).init::<B>(&Default::default());
    let named: BTreeMap<_, _> = m.named_tensors().into_iter().collect();
    let sum = |k: &str| named[k].to_vec::<f32>().unwrap().iter().map(|v| v.abs()).sum::<f32>();
    assert_eq!(sum("layer1.0.bn3.weight"), 0.0);
    assert_eq!(sum("layer4.2.bn3.weight"), 0.0);
    assert_eq!(sum("layer1.0.bn2.weight"), 64.0);
    assert_eq!(sum("layer1.0.downsample.1.weight"), 256.0);
}
