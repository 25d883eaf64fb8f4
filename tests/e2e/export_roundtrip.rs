//! Export → import: the torchvision file written by `sca-export` loads back into the
//! backbone and gives the same features as the model it came from.

use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};
use sca_backbone::{Arch, ResNetConfig};

#[test]
fn exported_torchvision_file_gives_identical_features() {
    let device = Default::default();
    for arch in [Arch::ResNet18, Arch::ResNet50] {
        let source = ResNetConfig::new(arch).init::<Flex>(&device);
        let export = sca_export::export(&source.to_safetensors(), sca_export::Format::Torchvision, None, std::path::Path::new("out")).unwrap();
        let file = export.files.iter().find(|f| f.path.ends_with(sca_export::TORCHVISION_FILE)).expect("torchvision file");
        let (loaded, _) = ResNetConfig::new(arch).init::<Flex>(&device).load_safetensors(&file.bytes).unwrap();
        let x = Tensor::<Flex, 4>::random([2, 3, 64, 64], Distribution::Normal(0.0, 1.0), &device);
        let a = source.forward_features(x.clone()).into_data().to_vec::<f32>().unwrap();
        let b = loaded.forward_features(x).into_data().to_vec::<f32>().unwrap();
        assert_eq!(a, b, "{arch}");
    }
}
