//! Learning-rate schedules as plain functions of the global step (SwAV `main_swav.py`).

use std::f64::consts::PI;

/// SwAV's schedule: `np.linspace(start_lr, base_lr, W)` over the `W = steps_per_epoch ·
/// warmup_epochs` warm-up steps (the last warm-up step is exactly `base_lr`), then
/// `final + ½(base − final)(1 + cos(π t / T))` for `t = 0 … T−1`, `T` = the remaining steps
/// (so the first cosine step is `base_lr` again and the last is just above `final_lr`).
/// Steps past the end return `final_lr`.
pub fn warmup_cosine(
    step: usize,
    steps_per_epoch: usize,
    warmup_epochs: usize,
    total_epochs: usize,
    start_lr: f64,
    base_lr: f64,
    final_lr: f64,
) -> f64 {
    let warmup = steps_per_epoch * warmup_epochs;
    if step < warmup {
        // np.linspace with num = 1 yields just `start`.
        if warmup == 1 {
            return start_lr;
        }
        return start_lr + (base_lr - start_lr) * step as f64 / (warmup - 1) as f64;
    }
    let t = step - warmup;
    let cosine_steps = steps_per_epoch * total_epochs.saturating_sub(warmup_epochs);
    if t >= cosine_steps {
        return final_lr;
    }
    final_lr + 0.5 * (base_lr - final_lr) * (1.0 + (PI * t as f64 / cosine_steps as f64).cos())
}

/// Linear scaling rule: `lr · batch / reference` (reference 256 in SwAV and the paper).
pub fn scale_lr(lr: f64, batch: usize, reference: usize) -> f64 {
    lr * batch as f64 / reference as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (step, expected) for 10 steps/epoch, 2 warm-up epochs, 6 epochs, 0.3 → 3.6 → 0.0036:
    /// warm-up W = 20 steps, cosine T = 40 steps.
    fn check(step: usize, want: f64) {
        let got = warmup_cosine(step, 10, 2, 6, 0.3, 3.6, 0.0036);
        assert!(
            (got - want).abs() < 1e-12,
            "step {step}: got {got}, want {want}"
        );
    }

    #[test]
    fn swav_schedule_corners() {
        check(0, 0.3); // first warm-up step: start_lr
        check(1, 0.3 + 3.3 / 19.0); // linspace step (base − start)/(W − 1)
        check(19, 3.6); // last warm-up step: base_lr (linspace includes the end point)
        check(20, 3.6); // first cosine step: cos(0) = 1
        check(40, 0.0036 + 0.5 * (3.6 - 0.0036)); // midpoint t = T/2: cos(π/2) = 0
        let last = 0.0036 + 0.5 * (3.6 - 0.0036) * (1.0 + (PI * 39.0 / 40.0).cos());
        check(59, last); // last step t = T − 1, just above final_lr
        check(60, 0.0036); // past the end
        check(1000, 0.0036);
    }

    #[test]
    fn zero_and_single_step_warmup() {
        let f = |step| warmup_cosine(step, 4, 0, 2, 0.1, 1.0, 0.0);
        assert_eq!(f(0), 1.0); // no warm-up: starts at base_lr
        assert!((f(4) - 0.5).abs() < 1e-12); // T = 8, t = 4: midpoint
        assert!((f(7) - 0.5 * (1.0 + (PI * 7.0 / 8.0).cos())).abs() < 1e-12);
        // One warm-up step (np.linspace(start, base, 1) == [start]).
        assert_eq!(warmup_cosine(0, 1, 1, 3, 0.1, 1.0, 0.0), 0.1);
        assert_eq!(warmup_cosine(1, 1, 1, 3, 0.1, 1.0, 0.0), 1.0);
    }

    #[test]
    fn linear_scaling() {
        let check = |lr, batch, want: f64| assert!((scale_lr(lr, batch, 256) - want).abs() < 1e-12);
        check(0.3, 256, 0.3);
        check(0.3, 2048, 2.4);
        check(0.6, 64, 0.15);
        check(0.03, 512, 0.06);
    }
}
