//! Whether `sca check-device`'s default tolerances leave room for a correct GPU.
//!
//! A GPU convolves f32 tensors on TF32 tensor cores (inputs rounded to a 10-bit mantissa),
//! the CPU in f32, so a correct GPU does not reproduce the CPU's run exactly; how far apart
//! rounding alone takes the two is measured here on the CPU itself: the check's run with
//! the convolutions in bf16 (8-bit mantissa: coarser than TF32) and in f16 (TF32's
//! mantissa, plus rounded outputs and loss scaling) against the same run in f32, from one
//! start (`sca_train::parity::compare_runs`). Both must pass `Tolerances::GPU`, or the check
//! would fail cards that compute correctly. Measured (2-core CPU, 2026-12-07): bf16 losses
//! within 1.1e-2, median update error 3.3e-4, worst 0.25 (`bn1.bias`); f16 1.1e-3, 4.2e-5,
//! 0.11: a tolerance of 0.05 on every tensor, as the check had, failed both.

use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use sca_data::scenes::{Scenes, Split};
use sca_train::parity::{check_overrides, compare_runs, Tolerances};

const DEFAULT: &str = include_str!("../../../configs/default.json");

#[test]
fn rounding_the_convolutions_stays_within_the_gpu_tolerances() {
    let size = 48; // check-device's default
    let base = check_overrides(size);
    let f32_cfg = sca_train::config::parse(DEFAULT, "default.json", &base).unwrap();
    for precision in ["bf16", "f16"] {
        let mut o = base.clone();
        o.push(format!("precision={precision}"));
        let cfg = sca_train::config::parse(DEFAULT, "default.json", &o).unwrap();
        let data = Arc::new(Scenes::new(size, 3, 8, 0, Split::Train).unwrap());
        let parity = compare_runs::<Autodiff<Flex>>(cfg, f32_cfg.clone(), data, Default::default()).unwrap();
        let worst = &parity.tensors[0];
        eprintln!("{precision}: median update error {:.2e}, worst {:.2e} ({}), features {:.2e}", parity.median_update_error(), worst.update_error, worst.name, parity.features);
        assert_eq!(parity.steps.len(), 4);
        // Rounding does show: the comparison is not of two identical runs.
        assert!(parity.median_update_error() > 1e-6, "{precision}: no difference from f32 at all");
        let failures = parity.failures(&Tolerances::GPU);
        assert!(failures.is_empty(), "{precision} convolutions against f32 on the CPU:\n{}", failures.join("\n"));
    }
}
