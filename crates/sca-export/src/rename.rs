//! torchvision → Detectron2 parameter names.
//!
//! These are the string rewrites of MoCo's `convert-pretrain-to-detectron2.py`, applied
//! in the same order, so a checkpoint from us and one from MoCo land on the same names.

/// Detectron2's name for a torchvision ResNet key, e.g. `layer1.0.bn2.weight` →
/// `res2.0.conv2.norm.weight`, `bn1.running_mean` → `stem.conv1.norm.running_mean`.
pub fn detectron2_name(torchvision_key: &str) -> String {
    let mut k = if torchvision_key.contains("layer") {
        torchvision_key.to_string()
    } else {
        format!("stem.{torchvision_key}")
    };
    for t in 1..=4 {
        k = k.replace(&format!("layer{t}"), &format!("res{}", t + 1));
    }
    for t in 1..=3 {
        k = k.replace(&format!("bn{t}"), &format!("conv{t}.norm"));
    }
    k.replace("downsample.0", "shortcut")
        .replace("downsample.1", "shortcut.norm")
}

/// Whether a torchvision key goes into the Detectron2 file: Detectron2 has neither the
/// classifier nor BN counters, and its model-zoo `.pkl` files carry float arrays only.
pub fn in_detectron2(torchvision_key: &str) -> bool {
    !torchvision_key.starts_with("fc.") && !torchvision_key.ends_with(".num_batches_tracked")
}
