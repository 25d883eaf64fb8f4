//! Training-mode batch norm as one autodiff operation.
//!
//! Written with tensor operations, batch norm runs six kernels over the whole activation
//! forward (mean, centring, square, mean, scale, shift) and about ten backward (each autodiff
//! node's gradient its own kernels), plus a dozen on per-channel vectors, and without Burn's
//! operation fusion each is a launch and each full-size one reads and writes the whole
//! tensor: ResNet-50 has 53 of these layers. [`batch_norm_train`] computes the same function
//! in four passes: forward, the per-channel mean and variance (which also update the running
//! statistics: six more launches otherwise) and the normalisation; backward, the two
//! per-channel gradient sums and the input gradient. The per-channel sums run on about a
//! thousand cubes in all: a channel with many values is split over several cubes, whose
//! parts a small kernel merges (one more launch each way), so that at 64 channels every SM
//! reads. The per-channel factors are derived inside the kernels:
//!
//! `y = a·x + β − a·μ` with `a = γ/σ`; `dγ = Σ(g·(x−μ))/σ`, `dβ = Σg`;
//! `dx = a·g + b·x + d` with `b = −a·dγ/(σ·N)`, `d = −a·dβ/N − b·μ`
//! (`N` values per channel, `σ = √(var + ε)`, biased variance, `g = dy`).
//!
//! A ReLU after the batch norm can be part of the operation: the output is clamped in the
//! forward map, and backward `g` is `dy` where the output is positive and 0 elsewhere, inside
//! the two passes. The tensor operations read the kept output for that mask; the kernels
//! recompute the values before the ReLU from `x`, which they read anyway, the same way the
//! forward pass computed them ([`Relu`]), and so read one tensor fewer each.
//!
//! On CubeCL backends the passes are kernels of this module (f32 tensors; others take the
//! tensor-operation path); on the CPU's Flex backend they are tensor operations, which is
//! also the reference the CubeCL kernels are tested against.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{CheckpointStrategy, NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use crate::cube_util::{grid_2d, grid_for, vector_size};
use crate::layout::{empty_in, in_own_layout, into_layout, own_layout, Layout};
use crate::{is, same_type, CudaBackend};

/// The passes of batch norm over `[B, C, S...]` tensors (`S`: the positions' dimensions, `L`
/// positions in all), channels-first or (on CubeCL) channels-last in memory; per-channel
/// vectors are `[C]`; `relu`, where given, is a ReLU ending the forward map.
pub trait BatchNormKernels: Backend {
    /// Per-channel mean and biased variance, and the running statistics updated with them.
    fn channel_moments(x: FloatTensor<Self>, running: &Running<Self>) -> (FloatTensor<Self>, FloatTensor<Self>, Running<Self>);
    /// `(x − μ)·γ/σ + β`, with `relu` clamped at 0.
    fn normalize(x: FloatTensor<Self>, stats: &Stats<Self>, beta: FloatTensor<Self>, relu: bool) -> FloatTensor<Self>;
    /// `(dγ, dβ)`.
    fn affine_grads(x: FloatTensor<Self>, dy: FloatTensor<Self>, stats: &Stats<Self>, relu: Option<Relu<Self>>) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// `dx` from `dγ` and `dβ`.
    fn input_grad(x: FloatTensor<Self>, dy: FloatTensor<Self>, stats: &Stats<Self>, d_gamma: FloatTensor<Self>, d_beta: FloatTensor<Self>, relu: Option<Relu<Self>>) -> FloatTensor<Self>;
    /// `dy` in `x`'s memory order, which both backward passes read it in: brought there
    /// once, not by each pass.
    fn in_layout_of(dy: FloatTensor<Self>, _x: &FloatTensor<Self>) -> FloatTensor<Self> {
        dy
    }
}

/// What the passes after the statistics share: mean, biased variance, γ and ε.
#[derive(Clone, Debug)]
pub struct Stats<B: Backend> {
    pub mean: FloatTensor<B>,
    pub var: FloatTensor<B>,
    pub gamma: FloatTensor<B>,
    pub epsilon: f32,
}

/// A ReLU ending the forward map, as the backward passes see it: its output, whose sign is
/// its mask on the tensor-operation path, and `β`, from which the CubeCL kernels recompute
/// the values before the ReLU from `x` (which they read anyway) instead of reading the
/// output: one full read fewer in each backward pass.
#[derive(Clone, Debug)]
pub struct Relu<B: Backend> {
    pub out: FloatTensor<B>,
    pub beta: FloatTensor<B>,
}

/// Running mean and (biased) variance, updated as `(1 − momentum)·running + momentum·batch`.
#[derive(Clone, Debug)]
pub struct Running<B: Backend> {
    pub mean: FloatTensor<B>,
    pub var: FloatTensor<B>,
    pub momentum: f64,
}

/// The passes as tensor operations, on any backend.
mod ops {
    use super::*;

    fn t<B: Backend, const D: usize>(x: FloatTensor<B>) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(x))
    }

    fn p<B: Backend, const D: usize>(x: Tensor<B, D>) -> FloatTensor<B> {
        x.into_primitive().tensor()
    }

    /// `[B, C, S...]` as `[B, C, L]` (`L` positions).
    fn t3<B: Backend>(x: FloatTensor<B>) -> Tensor<B, 3> {
        let [images, channels, len] = super::flat_dims(&x.shape());
        t::<B, 3>(B::float_reshape(x, Shape::new([images, channels, len])))
    }

    /// `[B, C, L]` back in `like`'s shape.
    fn shaped<B: Backend>(x: Tensor<B, 3>, like: Shape) -> FloatTensor<B> {
        B::float_reshape(p(x), like)
    }

    /// `[C]` → `[B, C, 1]`: a value per row of `[B, C, L]` (the broadcast Flex is fast at).
    fn per_row<B: Backend>(v: Tensor<B, 1>, images: usize) -> Tensor<B, 3> {
        let c = v.dims()[0];
        v.reshape([1, c, 1]).repeat_dim(0, images)
    }

    fn sum<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 1> {
        let c = x.dims()[1];
        x.sum_dim(2).sum_dim(0).reshape([c])
    }

    /// `(1/σ, a = γ/σ)`.
    fn inv_std_and_scale<B: Backend>(s: &Stats<B>) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let inv_std = t::<B, 1>(s.var.clone()).add_scalar(s.epsilon).sqrt().recip();
        (inv_std.clone(), t::<B, 1>(s.gamma.clone()) * inv_std)
    }

    /// `dy`, zeroed where `relu_out ≤ 0` when given.
    fn through_relu<B: Backend>(dy: FloatTensor<B>, relu_out: Option<FloatTensor<B>>) -> Tensor<B, 3> {
        let dy = t3::<B>(dy);
        match relu_out {
            Some(y) => dy.mask_fill(t3::<B>(y).lower_equal_elem(0.0), 0.0),
            None => dy,
        }
    }

    fn count<B: Backend>(x: &Tensor<B, 3>) -> f32 {
        let [images, _, len] = x.dims();
        (images * len) as f32
    }

    pub(super) fn channel_moments<B: Backend>(x: FloatTensor<B>, running: &Running<B>) -> (FloatTensor<B>, FloatTensor<B>, Running<B>) {
        let x = t3::<B>(x);
        let (images, n) = (x.dims()[0], count(&x));
        let mean = sum(x.clone()).div_scalar(n);
        let var = sum((x - per_row(mean.clone(), images)).square()).div_scalar(n);
        let m = running.momentum;
        let update = |old: &FloatTensor<B>, new: &Tensor<B, 1>| p(t::<B, 1>(old.clone()).mul_scalar(1.0 - m).add(new.clone().mul_scalar(m)));
        let updated = Running { mean: update(&running.mean, &mean), var: update(&running.var, &var), momentum: m };
        (p(mean), p(var), updated)
    }

    pub(super) fn normalize<B: Backend>(x: FloatTensor<B>, s: &Stats<B>, beta: FloatTensor<B>, relu: bool) -> FloatTensor<B> {
        let shape = x.shape();
        let x = t3::<B>(x);
        let images = x.dims()[0];
        let (_, a) = inv_std_and_scale(s);
        let b = t::<B, 1>(beta) - t::<B, 1>(s.mean.clone()) * a.clone();
        let y = x * per_row(a, images) + per_row(b, images);
        shaped(if relu { burn::tensor::activation::relu(y) } else { y }, shape)
    }

    pub(super) fn affine_grads<B: Backend>(x: FloatTensor<B>, dy: FloatTensor<B>, s: &Stats<B>, relu: Option<Relu<B>>) -> (FloatTensor<B>, FloatTensor<B>) {
        let (x, g) = (t3::<B>(x), through_relu::<B>(dy, relu.map(|r| r.out)));
        let images = x.dims()[0];
        let (inv_std, _) = inv_std_and_scale(s);
        let centred = x - per_row(t::<B, 1>(s.mean.clone()), images);
        (p(sum(g.clone() * centred) * inv_std), p(sum(g)))
    }

    pub(super) fn input_grad<B: Backend>(x: FloatTensor<B>, dy: FloatTensor<B>, s: &Stats<B>, d_gamma: FloatTensor<B>, d_beta: FloatTensor<B>, relu: Option<Relu<B>>) -> FloatTensor<B> {
        let shape = x.shape();
        let (x, g) = (t3::<B>(x), through_relu::<B>(dy, relu.map(|r| r.out)));
        let (images, n) = (x.dims()[0], count(&x));
        let (inv_std, a) = inv_std_and_scale(s);
        let b = (a.clone() * t::<B, 1>(d_gamma) * inv_std).div_scalar(-n);
        let d = (a.clone() * t::<B, 1>(d_beta)).div_scalar(-n) - b.clone() * t::<B, 1>(s.mean.clone());
        shaped(g * per_row(a, images) + x * per_row(b, images) + per_row(d, images), shape)
    }
}

impl BatchNormKernels for Flex {
    fn channel_moments(x: FloatTensor<Self>, running: &Running<Self>) -> (FloatTensor<Self>, FloatTensor<Self>, Running<Self>) {
        ops::channel_moments::<Self>(x, running)
    }
    fn normalize(x: FloatTensor<Self>, stats: &Stats<Self>, beta: FloatTensor<Self>, relu: bool) -> FloatTensor<Self> {
        ops::normalize::<Self>(x, stats, beta, relu)
    }
    fn affine_grads(x: FloatTensor<Self>, dy: FloatTensor<Self>, stats: &Stats<Self>, relu: Option<Relu<Self>>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        ops::affine_grads::<Self>(x, dy, stats, relu)
    }
    fn input_grad(x: FloatTensor<Self>, dy: FloatTensor<Self>, stats: &Stats<Self>, d_gamma: FloatTensor<Self>, d_beta: FloatTensor<Self>, relu: Option<Relu<Self>>) -> FloatTensor<Self> {
        ops::input_grad::<Self>(x, dy, stats, d_gamma, d_beta, relu)
    }
}

/// The CubeCL kernels (their own module: CubeCL's `Tensor` is not Burn's). Per-channel
/// sums run a row of cubes per channel over parts of the channel's `B·L` values of a
/// contiguous `[B, C, L]` tensor, or, channels-last, a row of cubes per 32 channels over
/// parts of the `B·L` rows; element-wise ones and the merges one unit per element
/// (channel) over a 2-D grid of cubes.
mod kernel {
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::prelude::*;

    use crate::cube_util::{cube_index, cube_sum};

    /// Units per cube.
    pub(super) const UNITS: usize = 256;

    /// Units of a merge kernel's cube (one cube per channel; a power of two).
    pub(super) const MERGE_UNITS: usize = 64;

    /// Index of the `e`-th value of channel `c` (of `channels`) in `[B, C, len]` (or of the
    /// `e`-th vector, in a tensor of vectors whose `len` counts vectors).
    #[cube]
    fn at(e: usize, c: usize, channels: usize, len: usize) -> usize {
        let image = e / len;
        (image * channels + c) * len + (e - image * len)
    }

    /// `g`: `dy`, or 0 where the values before the ReLU, `y` ([`normalized`]), are at most 0
    /// with `masked` (where the forward pass clamped them to 0).
    #[cube]
    fn masked_grad<N: Size>(dy: Vector<f32, N>, y: Vector<f32, N>, #[comptime] masked: bool) -> Vector<f32, N> {
        let mut g = dy;
        if masked {
            let zero = Vector::new(0.0f32);
            g = select_many(y.less_equal(zero), zero, g);
        }
        g
    }

    /// This unit's share of two sums over channel `c`'s values in `[start, end)` of `x`: of
    /// their deviations from `shift` and of the squares of those, in one pass (the moments
    /// used to read their input twice, for the mean and then the deviations from it). Four
    /// loads are in flight per unit (four pairs of running sums): with one, the H200 read
    /// the moments' input at under half its bandwidth.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn part_sums<N: Size>(x: &Tensor<Vector<f32, N>>, start: usize, end: usize, c: usize, channels: usize, len: usize, live: bool, shift: f32, #[comptime] last: bool) -> (f32, f32) {
        // How many values of a channel one pass of the cube covers (see [`first_value`]).
        let step = comptime!(if last { ROW_LANES } else { UNITS });
        let s = Vector::<f32, N>::new(shift);
        let mut a0 = 0.0f32;
        let mut a1 = 0.0f32;
        let mut a2 = 0.0f32;
        let mut a3 = 0.0f32;
        let mut q0 = 0.0f32;
        let mut q1 = 0.0f32;
        let mut q2 = 0.0f32;
        let mut q3 = 0.0f32;
        let mut e = first_value(start, last);
        while e + 3 * step < end && live {
            let d0 = x[value_at(e, c, channels, len, last)] - s;
            let d1 = x[value_at(e + step, c, channels, len, last)] - s;
            let d2 = x[value_at(e + 2 * step, c, channels, len, last)] - s;
            let d3 = x[value_at(e + 3 * step, c, channels, len, last)] - s;
            a0 += lanes_total(d0);
            a1 += lanes_total(d1);
            a2 += lanes_total(d2);
            a3 += lanes_total(d3);
            q0 += lanes_total(d0 * d0);
            q1 += lanes_total(d1 * d1);
            q2 += lanes_total(d2 * d2);
            q3 += lanes_total(d3 * d3);
            e += 4 * step;
        }
        while e < end && live {
            let d0 = x[value_at(e, c, channels, len, last)] - s;
            a0 += lanes_total(d0);
            q0 += lanes_total(d0 * d0);
            e += step;
        }
        ((a0 + a1) + (a2 + a3), (q0 + q1) + (q2 + q3))
    }

    /// The value each part of channel `c` measures its deviations from: the channel's first
    /// (0 for a unit past the last channel). Sums of squares about a value of the channel
    /// itself keep the one-pass variance `Σd² − (Σd)²/n` free of the cancellation that sums
    /// about 0 suffer where a channel's mean is large against its spread; only a first value
    /// many standard deviations from the mean would cost digits.
    #[cube]
    fn channel_shift<N: Size>(x: &Tensor<Vector<f32, N>>, c: usize, channels: usize, len: usize, live: bool, #[comptime] last: bool) -> f32 {
        let mut shift = 0.0f32;
        if live {
            let first = x[value_at(0, c, channels, len, last)];
            shift = first[0];
        }
        shift
    }

    /// The sum of a vector's values.
    #[cube]
    fn lanes_total<N: Size>(v: Vector<f32, N>) -> f32 {
        let mut total = 0.0f32;
        #[unroll]
        for k in 0..v.size() {
            total += v[k];
        }
        total
    }

    /// The first of the values of a channel (of `per_channel`) that this cube's part
    /// covers: part `CUBE_POS_Y` of `CUBE_COUNT_Y` equal ones (the last may be shorter).
    #[cube]
    fn part_start(per_channel: u32) -> usize {
        CUBE_POS_Y as usize * part_len(per_channel)
    }

    /// One past the last value of this cube's part (see [`part_start`]).
    #[cube]
    fn part_end(per_channel: u32) -> usize {
        let mut end = (CUBE_POS_Y as usize + 1) * part_len(per_channel);
        if end > per_channel as usize {
            end = per_channel as usize;
        }
        end
    }

    /// The values in a full part: a channel's over `CUBE_COUNT_Y` parts, rounded up.
    #[cube]
    #[allow(clippy::manual_div_ceil)] // `div_ceil` does not expand in CubeCL kernels
    fn part_len(per_channel: u32) -> usize {
        let splits = CUBE_COUNT_Y as usize;
        (per_channel as usize + splits - 1) / splits
    }

    /// Channel `c`'s mean `m` and biased variance `v`, and the running statistics updated
    /// with them (`keep·running + momentum·batch`).
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn write_moments(
        c: usize,
        m: f32,
        v: f32,
        running_mean: &Tensor<f32>,
        running_var: &Tensor<f32>,
        mean: &mut Tensor<f32>,
        var: &mut Tensor<f32>,
        new_running_mean: &mut Tensor<f32>,
        new_running_var: &mut Tensor<f32>,
        keep: f32,
        momentum: f32,
    ) {
        mean[c] = m;
        var[c] = v;
        new_running_mean[c] = running_mean[c] * keep + m * momentum;
        new_running_var[c] = running_var[c] * keep + v * momentum;
    }

    /// Channels per cube of the channels-last sums: a warp reads 32 neighbouring channels of
    /// one position, one whole 128-byte line; the cube's 8 warps take every 8th position.
    pub(super) const LANES: usize = 32;
    const ROW_LANES: usize = UNITS / LANES;

    /// This unit's channel in a channels-last sum (past the last one in the last cube of a
    /// layer whose channels are not a multiple of [`LANES`]).
    #[cube]
    fn lane_channel() -> usize {
        CUBE_POS_X as usize * LANES + UNIT_POS_X as usize
    }

    /// The sum of `v` over the cube's units that share this unit's channel
    /// (`UNIT_POS_X`), on every unit; `shared` may be written again at once.
    #[cube]
    fn lane_sum(v: f32, shared: &mut SharedMemory<f32>) -> f32 {
        let lane = UNIT_POS_X as usize;
        shared[UNIT_POS_Y as usize * LANES + lane] = v;
        sync_cube();
        let mut total = 0.0f32;
        for k in 0..ROW_LANES {
            total += shared[k * LANES + lane];
        }
        sync_cube();
        total
    }

    /// The channel this unit sums: its cube's (channels-first), or its lane's of its cube's
    /// [`LANES`] (channels-last; past the last channel in a part-filled last cube).
    #[cube]
    fn summed_channel(#[comptime] last: bool) -> usize {
        let mut c = CUBE_POS_X as usize;
        if last {
            c = lane_channel();
        }
        c
    }

    /// This unit's first value of its channel's part: units side by side over the values
    /// (channels-first), or over the rows, [`LANES`] units to a row (channels-last).
    #[cube]
    fn first_value(start: usize, #[comptime] last: bool) -> usize {
        let mut e = start + UNIT_POS_X as usize;
        if last {
            e = start + UNIT_POS_Y as usize;
        }
        e
    }

    /// Where the `e`-th value of channel `c` lies: in `[B, C, len]`, or in `[rows, C]`.
    #[cube]
    fn value_at(e: usize, c: usize, channels: usize, len: usize, #[comptime] last: bool) -> usize {
        let mut i = at(e, c, channels, len);
        if last {
            i = e * channels + c;
        }
        i
    }

    /// The sum of `v` over the units that sum this unit's channel, on every unit (see
    /// [`cube_sum`] and [`lane_sum`]).
    #[cube]
    fn channel_sum(v: f32, shared: &mut SharedMemory<f32>, #[comptime] last: bool) -> f32 {
        if last {
            lane_sum(v, shared)
        } else {
            cube_sum(v, shared)
        }
    }

    /// Whether this unit writes its channel's sums: one unit per channel.
    #[cube]
    fn writes_channel(c: usize, channels: usize, #[comptime] last: bool) -> bool {
        let mut writes = UNIT_POS_X == 0;
        if last {
            writes = UNIT_POS_Y == 0 && c < channels;
        }
        writes
    }

    /// Cube `(c, k)` of `splits` per channel (channels-last: per [`LANES`] channels, `c` the
    /// tile): the count, mean and sum of squared deviations of part `k` of channel `c`'s
    /// values (one pass over them, [`part_sums`]), in `partial[0..3]` at `c·splits + k`. With one split
    /// it writes the mean, biased variance and updated running statistics
    /// (`keep·running + momentum·batch`) itself; else [`merge_moments_kernel`] does, from
    /// the parts. It reads `N` values at a time (channels-first, `len` a multiple of `N`;
    /// `per_channel` and `len` then count vectors); channels-last `N` is 1.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn moments_kernel<N: Size>(
        x: &Tensor<Vector<f32, N>>,
        running_mean: &Tensor<f32>,
        running_var: &Tensor<f32>,
        partial: &mut Tensor<f32>,
        mean: &mut Tensor<f32>,
        var: &mut Tensor<f32>,
        new_running_mean: &mut Tensor<f32>,
        new_running_var: &mut Tensor<f32>,
        keep: f32,
        momentum: f32,
        channels: u32,
        per_channel: u32,
        len: u32,
        #[comptime] split: bool,
        #[comptime] last: bool,
    ) {
        let channels = channels as usize;
        let len = len as usize;
        let c = summed_channel(last);
        let live = c < channels;
        let splits = CUBE_COUNT_Y as usize;
        let start = part_start(per_channel);
        let end = part_end(per_channel);
        let mut shared = SharedMemory::<f32>::new(UNITS);
        let n = f32::cast_from((end - start) * x.vector_size());
        let shift = channel_shift(x, c, channels, len, live, last);
        let (d, d2) = part_sums(x, start, end, c, channels, len, live, shift, last);
        let d = channel_sum(d, &mut shared, last);
        let d2 = channel_sum(d2, &mut shared, last);
        let m = shift + d / n;
        // Σ(x − m)² = Σd² − (Σd)²/n, at least 0 after rounding.
        let mut m2 = d2 - d * d / n;
        if m2 < 0.0 {
            m2 = 0.0;
        }
        if writes_channel(c, channels, last) {
            if split {
                let slot = c * splits + CUBE_POS_Y as usize;
                let parts = channels * splits;
                partial[slot] = n;
                partial[parts + slot] = m;
                partial[2 * parts + slot] = m2;
            } else {
                write_moments(c, m, m2 / n, running_mean, running_var, mean, var, new_running_mean, new_running_var, keep, momentum);
            }
        }
    }

    /// Cube `c`: channel `c`'s mean and biased variance from its `splits` parts, and the
    /// running statistics updated with them. Unit `u` merges parts `u`, `u + MERGE_UNITS`, …
    /// in order, then the cube merges its units' results pairwise (Chan's update, [`chan`]).
    /// (One unit per channel looping over all parts took 81 µs a layer on an H200: up to 512
    /// dependent steps where a channel has few neighbours to share the SMs with.)
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn merge_moments_kernel(
        partial: &Tensor<f32>,
        running_mean: &Tensor<f32>,
        running_var: &Tensor<f32>,
        mean: &mut Tensor<f32>,
        var: &mut Tensor<f32>,
        new_running_mean: &mut Tensor<f32>,
        new_running_var: &mut Tensor<f32>,
        keep: f32,
        momentum: f32,
        splits: u32,
    ) {
        let c = cube_index();
        if c >= mean.len() {
            terminate!();
        }
        let unit = UNIT_POS_X as usize;
        let splits = splits as usize;
        let parts = mean.len() * splits;
        let mut n = 0.0f32;
        let mut m = 0.0f32;
        let mut m2 = 0.0f32;
        let mut k = unit;
        while k < splits {
            let slot = c * splits + k;
            let (total, mean_, m2_) = chan(n, m, m2, partial[slot], partial[parts + slot], partial[2 * parts + slot]);
            n = total;
            m = mean_;
            m2 = m2_;
            k += MERGE_UNITS;
        }
        let mut shared_n = SharedMemory::<f32>::new(MERGE_UNITS);
        let mut shared_m = SharedMemory::<f32>::new(MERGE_UNITS);
        let mut shared_m2 = SharedMemory::<f32>::new(MERGE_UNITS);
        shared_n[unit] = n;
        shared_m[unit] = m;
        shared_m2[unit] = m2;
        sync_cube();
        // The cube's size read at run time (see `cube_sum`): a value derived from a comptime
        // one is a constant.
        let mut half = CUBE_DIM_X as usize / 2;
        while half > 0 {
            if unit < half {
                let o = unit + half;
                let (total, mean_, m2_) = chan(shared_n[unit], shared_m[unit], shared_m2[unit], shared_n[o], shared_m[o], shared_m2[o]);
                shared_n[unit] = total;
                shared_m[unit] = mean_;
                shared_m2[unit] = m2_;
            }
            sync_cube();
            half /= 2;
        }
        if unit == 0 {
            write_moments(c, shared_m[0], shared_m2[0] / shared_n[0], running_mean, running_var, mean, var, new_running_mean, new_running_var, keep, momentum);
        }
    }

    /// Chan's update: the count, mean and sum of squared deviations of two parts together
    /// (`a`'s unchanged where `b` is empty).
    #[cube]
    fn chan(n_a: f32, mean_a: f32, m2_a: f32, n_b: f32, mean_b: f32, m2_b: f32) -> (f32, f32, f32) {
        let mut n = n_a;
        let mut m = mean_a;
        let mut m2 = m2_a;
        if n_b > 0.0 {
            let total = n_a + n_b;
            let delta = mean_b - mean_a;
            m = mean_a + delta * (n_b / total);
            m2 = m2_a + m2_b + delta * delta * (n_a * n_b / total);
            n = total;
        }
        (n, m, m2)
    }

    /// The channel of the `i`-th value in memory of `[B, C, len]` (channels-first) or of its
    /// channels-last layout.
    #[cube]
    fn channel_of(i: usize, channels: u32, len: u32, #[comptime] channels_last: bool) -> usize {
        let mut c = (i / len as usize) % channels as usize;
        if channels_last {
            c = i % channels as usize;
        }
        c
    }

    /// `γ/σ` of channel `c`: the factor of its normalised values.
    #[cube]
    fn scale_of(c: usize, var: &Tensor<f32>, gamma: &Tensor<f32>, epsilon: f32) -> f32 {
        gamma[c] / f32::sqrt(var[c] + epsilon)
    }

    /// Channel `c`'s factor and offset of the normalised values, `y = a·x + b` with
    /// `a = γ/σ`, `b = β − μ·a`.
    #[cube]
    fn affine_of(c: usize, mean: &Tensor<f32>, var: &Tensor<f32>, gamma: &Tensor<f32>, beta: &Tensor<f32>, epsilon: f32) -> (f32, f32) {
        let a = scale_of(c, var, gamma, epsilon);
        (a, beta[c] - mean[c] * a)
    }

    /// `a·x + b` of one channel's factors ([`affine_of`]) for every value of `xv`.
    #[cube]
    fn affine<N: Size>(xv: Vector<f32, N>, a: f32, b: f32) -> Vector<f32, N> {
        Vector::new(a) * xv + Vector::new(b)
    }

    /// The normalised values of `xv`, whose first value is of channel `first` (all of
    /// it channels-first; channel `first + k` for value `k` channels-last), before any ReLU.
    /// The forward pass and the backward passes' ReLU masks compute them the same way
    /// ([`affine_of`], then one multiply and one add per value), so both see the same signs.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn normalized<N: Size>(xv: Vector<f32, N>, first: usize, mean: &Tensor<f32>, var: &Tensor<f32>, gamma: &Tensor<f32>, beta: &Tensor<f32>, epsilon: f32, #[comptime] channels_last: bool) -> Vector<f32, N> {
        let mut y = Vector::<f32, N>::empty();
        if channels_last {
            #[unroll]
            for k in 0..xv.size() {
                let (a, b) = affine_of(first + k, mean, var, gamma, beta, epsilon);
                y[k] = a * xv[k] + b;
            }
        } else {
            let (a, b) = affine_of(first, mean, var, gamma, beta, epsilon);
            y = affine(xv, a, b);
        }
        y
    }

    /// `out = (x − μ)·γ/σ + β` (with `relu`, at least 0), `N` values per unit: of one channel
    /// channels-first (`len` is a multiple of `N`), of `N` consecutive ones channels-last
    /// (`channels` is).
    #[cube(launch)]
    pub(super) fn normalize_kernel<N: Size>(
        x: &Tensor<Vector<f32, N>>,
        mean: &Tensor<f32>,
        var: &Tensor<f32>,
        gamma: &Tensor<f32>,
        beta: &Tensor<f32>,
        out: &mut Tensor<Vector<f32, N>>,
        epsilon: f32,
        channels: u32,
        len: u32,
        #[comptime] relu: bool,
        #[comptime] channels_last: bool,
    ) {
        let v = cube_index() * UNITS + UNIT_POS_X as usize;
        if v >= out.len() {
            terminate!();
        }
        let first = channel_of(v * x.vector_size(), channels, len, channels_last);
        let mut y = normalized(x[v], first, mean, var, gamma, beta, epsilon, channels_last);
        if relu {
            let zero = Vector::new(0.0f32);
            y = select_many(y.less_than(zero), zero, y);
        }
        out[v] = y;
    }

    /// Cube `(c, k)` of `splits` per channel (channels-last: per [`LANES`] channels): `Σ g`
    /// and `Σ g·(x − μ)` over part `k` of channel `c`'s values, in `partial[0..2]` at
    /// `c·splits + k`. With one split it writes `dβ[c] = Σ g` and `dγ[c] = Σ g·(x − μ)/σ`
    /// itself; else [`merge_affine_grads_kernel`] does, from the parts. `N` values at a time
    /// as in [`moments_kernel`].
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn affine_grads_kernel<N: Size>(
        x: &Tensor<Vector<f32, N>>,
        dy: &Tensor<Vector<f32, N>>,
        mean: &Tensor<f32>,
        var: &Tensor<f32>,
        gamma: &Tensor<f32>,
        beta: &Tensor<f32>,
        partial: &mut Tensor<f32>,
        d_gamma: &mut Tensor<f32>,
        d_beta: &mut Tensor<f32>,
        epsilon: f32,
        channels: u32,
        per_channel: u32,
        len: u32,
        #[comptime] masked: bool,
        #[comptime] split: bool,
        #[comptime] last: bool,
    ) {
        let channels = channels as usize;
        let len = len as usize;
        let c = summed_channel(last);
        let live = c < channels;
        let splits = CUBE_COUNT_Y as usize;
        let start = part_start(per_channel);
        let end = part_end(per_channel);
        // How many values of a channel one pass of the cube covers (see [`first_value`]).
        let step = comptime!(if last { ROW_LANES } else { UNITS });
        let m = mean[select(live, c, 0)];
        // The ReLU's mask: one channel per unit, so its factors once ([`normalized`]'s).
        let (a, b) = affine_of(select(live, c, 0), mean, var, gamma, beta, epsilon);
        let mut sg = 0.0f32;
        let mut sgx = 0.0f32;
        let mut e = first_value(start, last);
        while e < end && live {
            let i = value_at(e, c, channels, len, last);
            let xv = x[i];
            let g = masked_grad(dy[i], affine(xv, a, b), masked);
            sg += lanes_total(g);
            sgx += lanes_total(g * (xv - Vector::new(m)));
            e += step;
        }
        let mut shared = SharedMemory::<f32>::new(UNITS);
        let total_g = channel_sum(sg, &mut shared, last);
        let total_gx = channel_sum(sgx, &mut shared, last);
        if writes_channel(c, channels, last) {
            if split {
                let slot = c * splits + CUBE_POS_Y as usize;
                partial[slot] = total_g;
                partial[channels * splits + slot] = total_gx;
            } else {
                d_gamma[c] = total_gx * (1.0 / f32::sqrt(var[c] + epsilon));
                d_beta[c] = total_g;
            }
        }
    }

    /// Cube `c`: `dβ[c]` and `dγ[c]` from channel `c`'s `splits` parts, unit `u` adding
    /// parts `u`, `u + MERGE_UNITS`, … and the cube their sums (see [`merge_moments_kernel`]).
    #[cube(launch)]
    pub(super) fn merge_affine_grads_kernel(partial: &Tensor<f32>, var: &Tensor<f32>, d_gamma: &mut Tensor<f32>, d_beta: &mut Tensor<f32>, epsilon: f32, splits: u32) {
        let c = cube_index();
        if c >= d_beta.len() {
            terminate!();
        }
        let unit = UNIT_POS_X as usize;
        let splits = splits as usize;
        let parts = d_beta.len() * splits;
        let mut g = 0.0f32;
        let mut gx = 0.0f32;
        let mut k = unit;
        while k < splits {
            g += partial[c * splits + k];
            gx += partial[parts + c * splits + k];
            k += MERGE_UNITS;
        }
        let mut shared = SharedMemory::<f32>::new(MERGE_UNITS);
        let g = cube_sum(g, &mut shared);
        let gx = cube_sum(gx, &mut shared);
        if unit == 0 {
            d_gamma[c] = gx * (1.0 / f32::sqrt(var[c] + epsilon));
            d_beta[c] = g;
        }
    }

    /// Channel `c`'s factors of the input gradient `a·g + b·x + d`: `a = γ/σ`,
    /// `b = −a·dγ/(σ·N)`, `d = −a·dβ/N − b·μ` (`N` values per channel).
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn input_grad_factors(c: usize, mean: &Tensor<f32>, var: &Tensor<f32>, gamma: &Tensor<f32>, d_gamma: &Tensor<f32>, d_beta: &Tensor<f32>, epsilon: f32, per_channel: f32) -> (f32, f32, f32) {
        let inv_std = 1.0 / f32::sqrt(var[c] + epsilon);
        let a = gamma[c] * inv_std;
        let b = -(a * d_gamma[c] * inv_std) / per_channel;
        let d = -(a * d_beta[c]) / per_channel - b * mean[c];
        (a, b, d)
    }

    /// `out = a·g + b·x + d` (see [`input_grad_factors`]), `N` values per unit as in
    /// [`normalize_kernel`]; `g` is `dy`, masked where the forward pass's ReLU clamped with
    /// `masked` (see [`masked_grad`]).
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn input_grad_kernel<N: Size>(
        x: &Tensor<Vector<f32, N>>,
        dy: &Tensor<Vector<f32, N>>,
        mean: &Tensor<f32>,
        var: &Tensor<f32>,
        gamma: &Tensor<f32>,
        beta: &Tensor<f32>,
        d_gamma: &Tensor<f32>,
        d_beta: &Tensor<f32>,
        out: &mut Tensor<Vector<f32, N>>,
        epsilon: f32,
        per_channel: f32,
        channels: u32,
        len: u32,
        #[comptime] masked: bool,
        #[comptime] channels_last: bool,
    ) {
        let v = cube_index() * UNITS + UNIT_POS_X as usize;
        if v >= out.len() {
            terminate!();
        }
        let n = x.vector_size();
        let first = channel_of(v * n, channels, len, channels_last);
        let xv = x[v];
        let mut y = xv;
        if masked {
            y = normalized(xv, first, mean, var, gamma, beta, epsilon, channels_last);
        }
        let g = masked_grad(dy[v], y, masked);
        let mut out_v = Vector::<f32, N>::empty();
        if channels_last {
            #[unroll]
            for k in 0..n {
                let (a, b, d) = input_grad_factors(first + k, mean, var, gamma, d_gamma, d_beta, epsilon, per_channel);
                out_v[k] = a * g[k] + b * xv[k] + d;
            }
        } else {
            let (a, b, d) = input_grad_factors(first, mean, var, gamma, d_gamma, d_beta, epsilon, per_channel);
            out_v = Vector::new(a) * g + Vector::new(b) * xv + Vector::new(d);
        }
        out[v] = out_v;
    }
}

fn f32s<R: CubeRuntime>(tensors: &[&CubeTensor<R>]) -> bool {
    tensors.iter().all(|t| t.dtype == DType::F32)
}

/// `[B, C, L]`: images, channels and positions of a `[B, C, S...]` shape.
fn flat_dims(shape: &Shape) -> [usize; 3] {
    [shape[0], shape[1], (2..shape.num_dims()).map(|d| shape[d]).product()]
}

fn dims<R: CubeRuntime>(x: &CubeTensor<R>) -> [usize; 3] {
    flat_dims(&x.shape())
}

/// Cubes for an element-wise kernel over `n` values.
fn elementwise_cubes(n: usize) -> CubeCount {
    grid_for(n, kernel::UNITS)
}

/// Cubes per channel for the per-channel sums: one cube per channel leaves most SMs idle
/// at ResNet's 64 channels and reads a 1.6M-value channel (the stem's, at batch 128) with
/// 256 units; about [`SUM_CUBES`] cubes in all, each over at least [`MIN_PART`] values.
fn splits(channels: usize, per_channel: usize) -> usize {
    (SUM_CUBES / channels.max(1)).clamp(1, per_channel.div_ceil(MIN_PART).max(1))
}

/// Cubes the per-channel sums aim at: several per SM of an H100/H200 (132).
const SUM_CUBES: usize = 1024;

/// The fewest values a cube sums over when a channel is split (16 per unit).
const MIN_PART: usize = 16 * kernel::UNITS;

/// [`splits`] for channels-last memory, whose cubes sum [`kernel::LANES`] channels each.
fn splits_last(channels: usize, rows: usize) -> usize {
    (SUM_CUBES / channels.div_ceil(kernel::LANES)).clamp(1, rows.div_ceil(MIN_PART / kernel::LANES).max(1))
}

/// The per-channel sums' cubes over `[B, C, L]` values: how many parts a channel's values
/// split into, the grid and the cube (see [`splits`] and [`splits_last`]).
fn sum_grid(channels: usize, per_channel: usize, last: bool) -> (usize, CubeCount, CubeDim) {
    if last {
        let splits = splits_last(channels, per_channel);
        let cubes = CubeCount::Static(channels.div_ceil(kernel::LANES) as u32, splits as u32, 1);
        (splits, cubes, CubeDim::new_2d(kernel::LANES as u32, (kernel::UNITS / kernel::LANES) as u32))
    } else {
        let splits = splits(channels, per_channel);
        (splits, CubeCount::Static(channels as u32, splits as u32, 1), CubeDim::new_1d(kernel::UNITS as u32))
    }
}

/// Values per read of the per-channel sums over `x` (`[B, C, L]` in `layout`): as the
/// element-wise kernels read channels-first ([`channel_vector`]); channels-last one value
/// each, a warp already reading whole lines of neighbouring channels.
fn sum_vector<R: CubeRuntime>(x: &CubeTensor<R>, layout: Layout) -> usize {
    match layout {
        Layout::ChannelsLast => 1,
        Layout::ChannelsFirst => channel_vector(x, layout),
    }
}

/// Values per unit of the element-wise kernels over `x` (`[B, C, L]` in `layout`): a
/// vector's values must share a channel channels-first (runs of `L`) or be consecutive
/// channels channels-last (runs of `C`), see [`vector_size`].
fn channel_vector<R: CubeRuntime>(x: &CubeTensor<R>, layout: Layout) -> usize {
    let [_, channels, len] = dims(x);
    vector_size(x, if layout == Layout::ChannelsLast { channels } else { len })
}

fn per_channel<R: CubeRuntime>(like: &CubeTensor<R>, channels: usize) -> CubeTensor<R> {
    crate::cube_util::empty_dense(like, Shape::new([channels]), DType::F32)
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> BatchNormKernels for CubeBackend<R, F, I, BT> {
    fn in_layout_of(dy: FloatTensor<Self>, x: &FloatTensor<Self>) -> FloatTensor<Self> {
        into_layout(dy, own_layout(x))
    }

    fn channel_moments(x: FloatTensor<Self>, running: &Running<Self>) -> (FloatTensor<Self>, FloatTensor<Self>, Running<Self>) {
        if !f32s(&[&x, &running.mean, &running.var]) {
            return ops::channel_moments::<Self>(x, running);
        }
        let (x, layout) = in_own_layout(x);
        let last = layout == Layout::ChannelsLast;
        let [images, channels, len] = dims(&x);
        let (splits, cubes, cube) = sum_grid(channels, images * len, last);
        let vector = sum_vector(&x, layout);
        let [mean, var, new_mean, new_var] = std::array::from_fn(|_| per_channel(&x, channels));
        let partial = per_channel(&x, if splits > 1 { 3 * channels * splits } else { 1 });
        let (running_mean, running_var) = (into_contiguous(running.mean.clone()), into_contiguous(running.var.clone()));
        let (keep, momentum) = ((1.0 - running.momentum) as f32, running.momentum as f32);
        let client = x.client.clone();
        kernel::moments_kernel::launch::<R>(
            &client,
            cubes,
            cube,
            vector,
            x.into_tensor_arg(),
            running_mean.clone().into_tensor_arg(),
            running_var.clone().into_tensor_arg(),
            partial.clone().into_tensor_arg(),
            mean.clone().into_tensor_arg(),
            var.clone().into_tensor_arg(),
            new_mean.clone().into_tensor_arg(),
            new_var.clone().into_tensor_arg(),
            keep,
            momentum,
            channels as u32,
            (images * len / vector) as u32,
            (len / vector) as u32,
            splits > 1,
            last,
        );
        if splits > 1 {
            kernel::merge_moments_kernel::launch::<R>(
                &client,
                grid_2d(channels),
                CubeDim::new_1d(kernel::MERGE_UNITS as u32),
                partial.into_tensor_arg(),
                running_mean.into_tensor_arg(),
                running_var.into_tensor_arg(),
                mean.clone().into_tensor_arg(),
                var.clone().into_tensor_arg(),
                new_mean.clone().into_tensor_arg(),
                new_var.clone().into_tensor_arg(),
                keep,
                momentum,
                splits as u32,
            );
        }
        (mean, var, Running { mean: new_mean, var: new_var, momentum: running.momentum })
    }

    fn normalize(x: FloatTensor<Self>, s: &Stats<Self>, beta: FloatTensor<Self>, relu: bool) -> FloatTensor<Self> {
        if !f32s(&[&x, &s.mean, &s.var, &s.gamma, &beta]) {
            return ops::normalize::<Self>(x, s, beta, relu);
        }
        let (x, layout) = in_own_layout(x);
        let [_, channels, len] = dims(&x);
        let vector = channel_vector(&x, layout);
        let out = empty_in(layout, &x, x.shape(), DType::F32);
        kernel::normalize_kernel::launch::<R>(
            &x.client.clone(),
            elementwise_cubes(x.shape().num_elements() / vector),
            CubeDim::new_1d(kernel::UNITS as u32),
            vector,
            x.into_tensor_arg(),
            into_contiguous(s.mean.clone()).into_tensor_arg(),
            into_contiguous(s.var.clone()).into_tensor_arg(),
            into_contiguous(s.gamma.clone()).into_tensor_arg(),
            into_contiguous(beta).into_tensor_arg(),
            out.clone().into_tensor_arg(),
            s.epsilon,
            channels as u32,
            len as u32,
            relu,
            layout == Layout::ChannelsLast,
        );
        out
    }

    fn affine_grads(x: FloatTensor<Self>, dy: FloatTensor<Self>, s: &Stats<Self>, relu: Option<Relu<Self>>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if !f32s(&[&x, &dy, &s.mean, &s.var, &s.gamma]) || relu.as_ref().is_some_and(|r| !f32s(&[&r.beta])) {
            return ops::affine_grads::<Self>(x, dy, s, relu);
        }
        let (x, layout) = in_own_layout(x);
        let last = layout == Layout::ChannelsLast;
        let dy = into_layout(dy, layout);
        let [images, channels, len] = dims(&x);
        let masked = relu.is_some();
        // β only for the mask (γ's place, unread, without a ReLU).
        let beta = into_contiguous(relu.map_or_else(|| s.gamma.clone(), |r| r.beta));
        let (d_gamma, d_beta) = (per_channel(&x, channels), per_channel(&x, channels));
        let (splits, cubes, cube) = sum_grid(channels, images * len, last);
        let vector = sum_vector(&x, layout);
        let partial = per_channel(&x, if splits > 1 { 2 * channels * splits } else { 1 });
        let var = into_contiguous(s.var.clone());
        let client = x.client.clone();
        kernel::affine_grads_kernel::launch::<R>(
            &client,
            cubes,
            cube,
            vector,
            x.into_tensor_arg(),
            dy.into_tensor_arg(),
            into_contiguous(s.mean.clone()).into_tensor_arg(),
            var.clone().into_tensor_arg(),
            into_contiguous(s.gamma.clone()).into_tensor_arg(),
            beta.into_tensor_arg(),
            partial.clone().into_tensor_arg(),
            d_gamma.clone().into_tensor_arg(),
            d_beta.clone().into_tensor_arg(),
            s.epsilon,
            channels as u32,
            (images * len / vector) as u32,
            (len / vector) as u32,
            masked,
            splits > 1,
            last,
        );
        if splits > 1 {
            kernel::merge_affine_grads_kernel::launch::<R>(
                &client,
                grid_2d(channels),
                CubeDim::new_1d(kernel::MERGE_UNITS as u32),
                partial.into_tensor_arg(),
                var.into_tensor_arg(),
                d_gamma.clone().into_tensor_arg(),
                d_beta.clone().into_tensor_arg(),
                s.epsilon,
                splits as u32,
            );
        }
        (d_gamma, d_beta)
    }

    fn input_grad(x: FloatTensor<Self>, dy: FloatTensor<Self>, s: &Stats<Self>, d_gamma: FloatTensor<Self>, d_beta: FloatTensor<Self>, relu: Option<Relu<Self>>) -> FloatTensor<Self> {
        if !f32s(&[&x, &dy, &s.mean, &s.var, &s.gamma, &d_gamma, &d_beta]) || relu.as_ref().is_some_and(|r| !f32s(&[&r.beta])) {
            return ops::input_grad::<Self>(x, dy, s, d_gamma, d_beta, relu);
        }
        let (x, layout) = in_own_layout(x);
        let dy = into_layout(dy, layout);
        let [images, channels, len] = dims(&x);
        let masked = relu.is_some();
        let beta = into_contiguous(relu.map_or_else(|| s.gamma.clone(), |r| r.beta));
        let vector = channel_vector(&x, layout);
        let out = empty_in(layout, &x, x.shape(), DType::F32);
        kernel::input_grad_kernel::launch::<R>(
            &x.client.clone(),
            elementwise_cubes(x.shape().num_elements() / vector),
            CubeDim::new_1d(kernel::UNITS as u32),
            vector,
            x.into_tensor_arg(),
            dy.into_tensor_arg(),
            into_contiguous(s.mean.clone()).into_tensor_arg(),
            into_contiguous(s.var.clone()).into_tensor_arg(),
            into_contiguous(s.gamma.clone()).into_tensor_arg(),
            beta.into_tensor_arg(),
            into_contiguous(d_gamma).into_tensor_arg(),
            into_contiguous(d_beta).into_tensor_arg(),
            out.clone().into_tensor_arg(),
            s.epsilon,
            (images * len) as f32,
            channels as u32,
            len as u32,
            masked,
            layout == Layout::ChannelsLast,
        );
        out
    }
}

/// Batch norm over `[B, C, S...]` (followed by a ReLU with `relu`) as one autodiff operation
/// of `x`, `γ` and `β`; also the running statistics updated with the batch's.
fn autodiff_batch_norm<B: BatchNormKernels, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    gamma: FloatTensor<Autodiff<B, C>>,
    beta: FloatTensor<Autodiff<B, C>>,
    epsilon: f64,
    relu: bool,
    running: &Running<B>,
) -> (FloatTensor<Autodiff<B, C>>, Running<B>) {
    #[derive(Debug)]
    struct BatchNormBackward;

    impl<B: BatchNormKernels> Backward<B, 3> for BatchNormBackward {
        /// `x`, the statistics, and the ReLU when one ends the operation.
        type State = (FloatTensor<B>, Stats<B>, Option<Relu<B>>);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node_x, node_gamma, node_beta] = ops.parents;
            let dy = grads.consume::<B>(&ops.node);
            let (x, stats, relu) = ops.state;
            let dy = B::in_layout_of(dy, &x);
            let (d_gamma, d_beta) = B::affine_grads(x.clone(), dy.clone(), &stats, relu.clone());
            if let Some(node) = node_x {
                grads.register::<B>(node.id, B::input_grad(x, dy, &stats, d_gamma.clone(), d_beta.clone(), relu));
            }
            if let Some(node) = node_gamma {
                grads.register::<B>(node.id, d_gamma);
            }
            if let Some(node) = node_beta {
                grads.register::<B>(node.id, d_beta);
            }
        }
    }

    let (mean, var, running) = B::channel_moments(x.primitive.clone(), running);
    let stats = Stats { mean, var, gamma: gamma.primitive.clone(), epsilon: epsilon as f32 };
    let y = B::normalize(x.primitive.clone(), &stats, beta.primitive.clone(), relu);
    let y = match BatchNormBackward.prepare::<C>([x.node.clone(), gamma.node.clone(), beta.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let relu = relu.then(|| Relu { out: y.clone(), beta: beta.primitive });
            prep.finish((x.primitive, stats, relu), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    (y, running)
}

/// The inputs of [`batch_norm_train`]: `x` (`[B, C, H, W]`), `γ`, `β`, and the running
/// mean and variance (`[C]`).
pub type BatchNormInputs<B> = (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>);

/// Training-mode batch norm of `x` (`[B, C, H, W]`) with scale `gamma` and shift `beta`
/// (`[C]`), followed by a ReLU with `relu`, as one autodiff operation: `(y, running mean,
/// running variance)`, the running statistics (given without gradient) updated with the
/// batch mean and biased variance as `(1 − momentum)·running + momentum·batch`, Burn's
/// `BatchNorm` rule. On the autodiff backends of CUDA, Flex (and, with the `wgpu` feature,
/// wgpu); `Err` with the inputs back on any other backend.
#[allow(clippy::type_complexity)]
pub fn batch_norm_train<B: Backend>(
    inputs: BatchNormInputs<B>,
    epsilon: f64,
    momentum: f64,
    relu: bool,
) -> Result<(Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>), BatchNormInputs<B>> {
    let inputs = match run_as::<B, CudaBackend>(inputs, epsilon, momentum, relu) {
        Ok(out) => return Ok(out),
        Err(inputs) => inputs,
    };
    #[cfg(feature = "wgpu")]
    let inputs = match run_as::<B, crate::WgpuBackend>(inputs, epsilon, momentum, relu) {
        Ok(out) => return Ok(out),
        Err(inputs) => inputs,
    };
    run_as::<B, Flex>(inputs, epsilon, momentum, relu)
}

#[allow(clippy::type_complexity)]
fn run_as<B: Backend, T: BatchNormKernels>(
    (x, gamma, beta, running_mean, running_var): BatchNormInputs<B>,
    epsilon: f64,
    momentum: f64,
    relu: bool,
) -> Result<(Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>), BatchNormInputs<B>> {
    if !is::<B, Autodiff<T>>() {
        return Err((x, gamma, beta, running_mean, running_var));
    }
    let inner = |t: Tensor<B, 1>| same_type::<_, Tensor<Autodiff<T>, 1>>(t).inner();
    let running = (inner(running_mean), inner(running_var));
    let (y, mean, var) = batch_norm_on::<T>(same_type(x), same_type(gamma), same_type(beta), running, epsilon, momentum, relu);
    let outer = |t: Tensor<T, 1>| same_type(Tensor::<Autodiff<T>, 1>::from_inner(t));
    Ok((same_type(y), outer(mean), outer(var)))
}

/// [`batch_norm_train`] on `Autodiff<T>` for any `T` with the kernels: the output, and the
/// running mean and variance `running` updated with the batch's.
#[allow(clippy::type_complexity)]
pub fn batch_norm_on<T: BatchNormKernels>(
    x: Tensor<Autodiff<T>, 4>,
    gamma: Tensor<Autodiff<T>, 1>,
    beta: Tensor<Autodiff<T>, 1>,
    (running_mean, running_var): (Tensor<T, 1>, Tensor<T, 1>),
    epsilon: f64,
    momentum: f64,
    relu: bool,
) -> (Tensor<Autodiff<T>, 4>, Tensor<T, 1>, Tensor<T, 1>) {
    let prim = |t: Tensor<Autodiff<T>, 1>| t.into_primitive().tensor();
    let running = Running { mean: running_mean.into_primitive().tensor(), var: running_var.into_primitive().tensor(), momentum };
    // Four-dimensional throughout: merging H and W of a channels-last tensor would copy it.
    let x = x.into_primitive().tensor();
    let (y, running) = autodiff_batch_norm::<T, NoCheckpointing>(x, prim(gamma), prim(beta), epsilon, relu, &running);
    let y = Tensor::<Autodiff<T>, 4>::from_primitive(TensorPrimitive::Float(y));
    let stat = |s: FloatTensor<T>| Tensor::<T, 1>::from_primitive(TensorPrimitive::Float(s));
    (y, stat(running.mean), stat(running.var))
}

/// Inference-mode batch norm of `x` (`[B, C, H, W]`) with the running statistics `mean` and
/// `var`, followed by a ReLU with `relu`: one kernel on the CubeCL backends (CUDA and, with
/// the `wgpu` feature, wgpu), in `x`'s memory order; `Err(x)` on any other backend, whose
/// caller computes it with tensor operations.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_eval<B: Backend>(
    x: Tensor<B, 4>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    mean: Tensor<B, 1>,
    var: Tensor<B, 1>,
    epsilon: f64,
    relu: bool,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let stats = (gamma, beta, mean, var);
    let x = match eval_as::<B, CudaBackend>(x, &stats, epsilon, relu) {
        Ok(y) => return Ok(y),
        Err(x) => x,
    };
    #[cfg(feature = "wgpu")]
    let x = match eval_as::<B, crate::WgpuBackend>(x, &stats, epsilon, relu) {
        Ok(y) => return Ok(y),
        Err(x) => x,
    };
    Err(x)
}

#[allow(clippy::type_complexity)]
fn eval_as<B: Backend, T: BatchNormKernels>(
    x: Tensor<B, 4>,
    (gamma, beta, mean, var): &(Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>),
    epsilon: f64,
    relu: bool,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    if !is::<B, T>() {
        return Err(x);
    }
    let prim = |t: &Tensor<B, 1>| same_type::<_, Tensor<T, 1>>(t.clone()).into_primitive().tensor();
    let stats = Stats { mean: prim(mean), var: prim(var), gamma: prim(gamma), epsilon: epsilon as f32 };
    let y = T::normalize(same_type::<_, Tensor<T, 4>>(x).into_primitive().tensor(), &stats, prim(beta), relu);
    Ok(same_type(Tensor::<T, 4>::from_primitive(TensorPrimitive::Float(y))))
}
