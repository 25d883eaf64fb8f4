//! Training-mode batch norm without the transposes of Burn's implementation.
//!
//! Burn 0.21's `BatchNorm::forward` computes the batch statistics through
//! `swap_dims(0, 1).reshape([C, ·])`, twice, and normalises with `[1, C, 1, 1]` operands.
//! On the CPU backend both are slow paths: 3-D transposes are copied element by element,
//! and a `[1, C, 1]` operand broadcast over batch and positions is ~50× slower than a
//! same-shape op, while a `[B, C, 1]` one (a scalar per row of `[B, C, H·W]`) runs at full
//! speed. That made BN cost more than the convolutions (`examples/conv_bench.rs`, profile).
//! [`batch_norm_forward`] computes the same function of the same module (same parameters,
//! same running-statistics update) with contiguous reductions and per-row scalars only.
//!
//! On one replica, on the autodiff backends of CUDA and Flex, training-mode batch norm is
//! one autodiff operation ([`sca_kernels::batch_norm_train`]: four CubeCL kernels on the
//! GPU, the same passes as tensor operations on Flex). The tensor-operation
//! version here serves the other backends and SyncBN: with several data-parallel replicas
//! and [`sca_dist::sync_bn`] installed on the thread, the training statistics are those of
//! the global batch, their sums added up over the replicas inside the autodiff graph.

use burn::module::RunningState;
use burn::nn::BatchNorm;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use sca_dist::sync_bn;

/// `bn.forward(x)` for `[B, C, H, W]` input. In training mode (autodiff enabled) it
/// normalises with the biased batch statistics and updates the running mean and variance
/// exactly as Burn does (`running = (1 − momentum)·running + momentum·batch`, biased
/// variance); in inference mode it is `bn.forward(x)` with the running statistics folded
/// into one per-channel scale and shift (equal up to rounding).
pub fn batch_norm_forward<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    batch_norm_maybe_relu(bn, x, false)
}

/// `relu(batch_norm_forward(bn, x))`, the ReLU inside the batch-norm operation where
/// [`sca_kernels::batch_norm_train`] runs it.
pub fn batch_norm_relu_forward<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    batch_norm_maybe_relu(bn, x, true)
}

fn batch_norm_maybe_relu<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>, relu: bool) -> Tensor<B, 4> {
    let then_relu = |y: Tensor<B, 4>| if relu { burn::tensor::activation::relu(y) } else { y };
    if !B::ad_enabled(&x.device()) {
        // On the GPU one kernel (ReLU included) in x's memory order; tensor operations else.
        let device = x.device();
        let running = |r: &RunningState<Tensor<B, 1>>| r.value().to_device(&device);
        return match sca_kernels::batch_norm_eval(x, bn.gamma.val(), bn.beta.val(), running(&bn.running_mean), running(&bn.running_var), bn.epsilon, relu) {
            Ok(y) => y,
            Err(x) => then_relu(inference(bn, x)),
        };
    }
    let sync = sync_bn::get::<B>();
    // One replica: one autodiff operation (four passes) on the backends that have it.
    let x = match sync {
        Some(_) => x,
        None => {
            let device = x.device();
            let running = |r: &RunningState<Tensor<B, 1>>| r.value_sync().to_device(&device);
            let inputs = (x, bn.gamma.val(), bn.beta.val(), running(&bn.running_mean), running(&bn.running_var));
            match sca_kernels::batch_norm_train(inputs, bn.epsilon, bn.momentum, relu) {
                Ok((y, running_mean, running_var)) => {
                    bn.running_mean.update(running_mean);
                    bn.running_var.update(running_var);
                    return y;
                }
                Err((x, ..)) => x,
            }
        }
    };
    then_relu(graph_batch_norm(bn, x, sync))
}

/// Training-mode batch norm as tensor operations (SyncBN when `sync` is set).
fn graph_batch_norm<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>, sync: Option<(usize, sync_bn::StatSum<B>)>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let x = x.reshape([b, c, h * w]);
    // Per-channel values repeated per image: [B, C, 1], the broadcast the CPU backend is fast at.
    let per_row = |t: Tensor<B, 3>| t.repeat_dim(0, b);
    // Two contiguous reductions instead of a transpose: mean over positions, then images.
    let (mean, centered, var) = match sync {
        None => {
            let mean = x.clone().mean_dim(2).mean_dim(0); // [1, C, 1]
            let centered = x - per_row(mean.clone());
            let var = centered.clone().square().mean_dim(2).mean_dim(0);
            (mean, centered, var)
        }
        // SyncBN: the same two passes over the global batch (sums, then the centred sum of
        // squares, each added up over the replicas).
        Some((replicas, sum)) => {
            let count = (b * h * w * replicas) as f64;
            let sum = |t: Tensor<B, 3>| sum(t.reshape([1, c])).reshape([1, c, 1]);
            let mean = sum(x.clone().sum_dim(2).sum_dim(0)).div_scalar(count);
            let centered = x - per_row(mean.clone());
            let var = sum(centered.clone().square().sum_dim(2).sum_dim(0)).div_scalar(count);
            (mean, centered, var)
        }
    };
    update_running(bn, mean.clone().reshape([c]), var.clone().reshape([c]));

    // Fold γ / σ into one per-channel factor: two full-size ops instead of three.
    let scale = bn.gamma.val().reshape([1, c, 1]) / var.add_scalar(bn.epsilon).sqrt();
    (centered * per_row(scale) + per_row(bn.beta.val().reshape([1, c, 1]))).reshape([b, c, h, w])
}

/// `running = (1 − momentum)·running + momentum·batch` for the mean and the biased variance.
fn update_running<B: Backend>(bn: &BatchNorm<B>, mean: Tensor<B, 1>, var: Tensor<B, 1>) {
    let device = mean.device();
    let m = bn.momentum;
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    bn.running_mean.update(running_mean.mul_scalar(1.0 - m).add(mean.detach().mul_scalar(m)).detach());
    bn.running_var.update(running_var.mul_scalar(1.0 - m).add(var.detach().mul_scalar(m)).detach());
}

/// Inference: `y = x·s + t` with `s = γ/√(running_var + ε)` and `t = β − running_mean·s`,
/// applied as `[B, C, 1]` operands (Burn's `[1, C, 1, 1]` broadcast is the slow path on the
/// CPU backend, and dominated memory-bank and KNN feature passes).
fn inference<B: Backend>(bn: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let device = x.device();
    let scale = bn.gamma.val() / bn.running_var.value().to_device(&device).add_scalar(bn.epsilon).sqrt();
    let shift = bn.beta.val() - bn.running_mean.value().to_device(&device) * scale.clone();
    let per_row = |t: Tensor<B, 1>| t.reshape([1, c, 1]).repeat_dim(0, b);
    (x.reshape([b, c, h * w]) * per_row(scale) + per_row(shift)).reshape([b, c, h, w])
}
