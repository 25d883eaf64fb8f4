//! Optimisation for pretraining (SPEC §5, supplementary 1.2 of the paper).
//!
//! - [`lars`]: LARS in the LARC form of NVIDIA apex as used by SwAV (trust coefficient
//!   0.001, weight decay folded into the adapted gradient, momentum SGD inside), plus plain
//!   momentum SGD through the same type (`lars: false`). Implements Burn's
//!   [`SimpleOptimizer`](burn::optim::SimpleOptimizer), so
//!   [`LarsConfig::init`] gives an `Optimizer<M, B>` whose record holds the momentum buffers.
//! - [`schedule`]: the SwAV learning-rate schedule (linear warm-up, then cosine) and the
//!   linear batch-size scaling rule, as plain functions of the step.

pub mod lars;
pub mod schedule;

pub use lars::{Lars, LarsConfig, LarsState};
pub use schedule::{scale_lr, warmup_cosine};
