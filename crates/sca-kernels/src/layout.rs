//! NCHW ↔ NHWC copies for cubek's convolutions, by tiles through shared memory.
//!
//! cubek's convolution kernels want channels-last operands (channels the contiguous
//! dimension). Handed an NHWC view of an NCHW tensor, they copy it with CubeCL's generic
//! strided copy, which writes in order and reads along the channels, `H·W` elements apart:
//! each read of a warp touches as many memory sectors as it has units. Their NHWC result,
//! handed on as an NCHW view, made every element-wise and reduction kernel after the
//! convolution (batch norm, ReLU) read it that way too, without vector loads.
//!
//! [`to_channels_last`] and [`to_channels_first`] copy between the layouts as batched
//! matrix transposes ([`transpose_on`]): a cube loads a 32 × 32 tile with reads along rows
//! and writes it transposed, along the other matrix's rows, so both sides go by whole
//! sectors. Tensors already in the wanted layout pass through as views, without a copy.
//! [`pad_channels_last`] makes the channels-last copy of a tensor whose channels do not fill
//! whole vector loads (the stem's 3) with zero channels after them.
//!
//! With [`set_channels_last`] on, the convolutions hand on cubek's NHWC results as NCHW views
//! instead of copying them back, and the kernels after them keep that memory order: batch
//! norm and the residual ends read and write in the [`Layout`] of their input
//! ([`layout_of`], [`into_layout`], [`empty_in`]), so activations and their gradients stay
//! channels-last from one convolution to the next, as PyTorch's `channels_last` keeps them.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::{permute, permute_nchw_to_nhwc, permute_nhwc_to_nchw};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;

/// The CubeCL kernel (its own module: CubeCL's `Tensor` is not Burn's).
mod kernel {
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::prelude::*;

    /// A tile's side; a cube is `TILE × ROWS` units, each moving `TILE / ROWS` elements.
    pub(super) const TILE: usize = 32;
    pub(super) const ROWS: usize = 8;

    /// `out[b, j, i] = input[b, i, j]` for `input` `[batches, rows, cols]` and `out`
    /// `[batches, cols, rows]`, both contiguous; cube `(x, y, z)` moves the tile at column
    /// block x, row block y of matrix `first + z`.
    #[cube(launch)]
    pub(super) fn transpose_kernel<F: Numeric>(
        input: &Tensor<F>,
        out: &mut Tensor<F>,
        first: u32,
        rows: u32,
        cols: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        // One padding column, so that reading a tile column hits distinct banks.
        let mut tile = SharedMemory::<F>::new(TILE * (TILE + 1));
        let rows = rows as usize;
        let cols = cols as usize;
        let base = (first as usize + CUBE_POS_Z as usize) * rows * cols;
        let tx = UNIT_POS_X as usize;
        let ty = UNIT_POS_Y as usize;
        let row0 = CUBE_POS_Y as usize * TILE;
        let col0 = CUBE_POS_X as usize * TILE;
        // Reads: consecutive units along an input row.
        for pass in 0..TILE / ROWS {
            let r = ty + pass * ROWS;
            if row0 + r < rows && col0 + tx < cols {
                tile[r * (TILE + 1) + tx] = input[base + (row0 + r) * cols + col0 + tx];
            }
        }
        sync_cube();
        // Writes: consecutive units along an output row (an input column).
        for pass in 0..TILE / ROWS {
            let c = ty + pass * ROWS;
            if col0 + c < cols && row0 + tx < rows {
                out[base + (col0 + c) * rows + row0 + tx] = tile[tx * (TILE + 1) + c];
            }
        }
    }

    /// Units per cube of [`pad_channels_last_kernel`].
    pub(super) const UNITS: usize = 256;

    /// `out[n, y, x, k] = input[n, k, y, x]` for `k` below the input's channels, else 0:
    /// `out` contiguous `[N, H, W, K]`, `input` `[N, C, H, W]` with any strides.
    #[cube(launch)]
    pub(super) fn pad_channels_last_kernel<F: Numeric>(input: &Tensor<F>, out: &mut Tensor<F>, #[define(F)] _dtype: StorageType) {
        let i = crate::cube_util::cube_index() * UNITS + UNIT_POS_X as usize;
        if i >= out.len() {
            terminate!();
        }
        let k = i % out.shape(3);
        let pixel = i / out.shape(3);
        let x = pixel % out.shape(2);
        let row = pixel / out.shape(2);
        let y = row % out.shape(1);
        let n = row / out.shape(1);
        let mut v = F::from_int(0);
        if k < input.shape(1) {
            v = input[n * input.stride(0) + k * input.stride(1) + y * input.stride(2) + x * input.stride(3)];
        }
        out[i] = v;
    }
}

/// The NCHW tensor `t` (any strides) with zero channels added up to `channels`, as an NCHW
/// view of contiguous `[N, H, W, channels]` memory: what [`to_channels_last`] passes on
/// without a copy. One pass over the output.
pub fn pad_channels_last<R: CubeRuntime>(t: CubeTensor<R>, channels: usize) -> CubeTensor<R> {
    let [n, c, h, w] = t.shape().dims::<4>();
    assert!(channels >= c, "pad_channels_last: {channels} channels cannot hold {c}");
    let out = crate::cube_util::empty_dense(&t, Shape::new([n, h, w, channels]), t.dtype);
    let count = n * h * w * channels;
    if count > 0 {
        let dtype = t.dtype;
        kernel::pad_channels_last_kernel::launch::<R>(
            &t.client.clone(),
            crate::cube_util::grid_for(count, kernel::UNITS),
            CubeDim::new_1d(kernel::UNITS as u32),
            t.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            dtype.into(),
        );
    }
    permute_nhwc_to_nchw(out)
}

/// The contiguous `[batches, cols, rows]` transpose of the contiguous `[batches, rows, cols]`
/// tensor `t` (of any shape with that many elements), with shape `out_shape`.
pub fn transpose_on<R: CubeRuntime>(t: CubeTensor<R>, [batches, rows, cols]: [usize; 3], out_shape: Shape) -> CubeTensor<R> {
    assert!(t.is_contiguous(), "transpose_on reads a contiguous tensor");
    assert_eq!(t.shape().num_elements(), batches * rows * cols, "transpose_on: shape {:?} is not {batches} × {rows} × {cols}", t.shape());
    assert_eq!(out_shape.num_elements(), batches * rows * cols, "transpose_on: output shape {out_shape:?}");
    let out = crate::cube_util::empty_dense(&t, out_shape, t.dtype);
    if batches * rows * cols == 0 {
        return out;
    }
    let tiles = |n: usize| n.div_ceil(kernel::TILE) as u32;
    let dtype = t.dtype;
    // Matrices along z: at most 65,535 on CUDA; a batch beyond that goes in parts.
    let per_launch = 65_535;
    for first in (0..batches).step_by(per_launch) {
        let count = per_launch.min(batches - first);
        kernel::transpose_kernel::launch::<R>(
            &t.client,
            CubeCount::Static(tiles(cols), tiles(rows), count as u32),
            CubeDim::new_2d(kernel::TILE as u32, kernel::ROWS as u32),
            t.clone().into_tensor_arg(),
            out.clone().into_tensor_arg(),
            first as u32,
            rows as u32,
            cols as u32,
            dtype.into(),
        );
    }
    out
}

/// The NCHW tensor `t` as a contiguous `[N, H, W, C]` tensor: a view when its memory is
/// already laid out that way, else one tiled copy.
pub fn to_channels_last<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    let view = permute_nchw_to_nhwc(t.clone());
    if view.is_contiguous() {
        return view;
    }
    let [n, c, h, w] = t.shape().dims::<4>();
    transpose_on(into_contiguous(t), [n, c, h * w], Shape::new([n, h, w, c]))
}

/// The NHWC tensor `t` as a contiguous `[N, C, H, W]` tensor: a view when its memory is
/// already laid out that way, else one tiled copy.
pub fn to_channels_first<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    let view = permute_nhwc_to_nchw(t.clone());
    if view.is_contiguous() {
        return view;
    }
    let [n, h, w, c] = t.shape().dims::<4>();
    transpose_on(into_contiguous(t), [n, h * w, c], Shape::new([n, c, h, w]))
}

/// Whether convolutions hand on their channels-last results as they are (see the module's
/// documentation); off by default.
static CHANNELS_LAST: AtomicBool = AtomicBool::new(false);

/// Keeps activations channels-last between convolutions (on) or hands every convolution's
/// result on as a contiguous NCHW tensor (off, the default). Either gives the same values.
pub fn set_channels_last(on: bool) {
    CHANNELS_LAST.store(on, Ordering::Relaxed);
}

/// See [`set_channels_last`].
pub fn channels_last() -> bool {
    CHANNELS_LAST.load(Ordering::Relaxed)
}

/// The memory order of a `[B, C, S...]` tensor (S: one or more positions' dimensions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Row-major: `[B, C, S...]` contiguous.
    ChannelsFirst,
    /// `[B, S..., C]` contiguous, seen as `[B, C, S...]`.
    ChannelsLast,
}

/// The dimensions from outermost to innermost in memory.
fn memory_order(layout: Layout, rank: usize) -> Vec<usize> {
    match layout {
        Layout::ChannelsFirst => (0..rank).collect(),
        Layout::ChannelsLast => [0].into_iter().chain(2..rank).chain([1]).collect(),
    }
}

/// Whether `t`'s memory is `layout`, densely (strides of dimensions of size 1 do not count).
pub fn has_layout<R: CubeRuntime>(t: &CubeTensor<R>, layout: Layout) -> bool {
    let (shape, strides) = (t.shape(), t.meta.strides());
    if layout == Layout::ChannelsLast && shape.num_dims() < 3 {
        return false;
    }
    let mut expected = 1;
    memory_order(layout, shape.num_dims()).into_iter().rev().all(|d| {
        let ok = shape[d] == 1 || strides[d] == expected;
        expected *= shape[d];
        ok
    })
}

/// `t`'s layout, channels-first where both fit (one channel, or one position); `None` for
/// any other memory order.
pub fn layout_of<R: CubeRuntime>(t: &CubeTensor<R>) -> Option<Layout> {
    [Layout::ChannelsFirst, Layout::ChannelsLast].into_iter().find(|&l| has_layout(t, l))
}

/// The layout a kernel that keeps its input's memory order works in for `t`: its own, or
/// channels-first when it is neither (the copy [`into_layout`] then makes).
pub fn own_layout<R: CubeRuntime>(t: &CubeTensor<R>) -> Layout {
    layout_of(t).unwrap_or(Layout::ChannelsFirst)
}

/// `t` in its [`own_layout`], and that layout: the outputs are made in it, and the other
/// operands brought to it, so a kernel reads all of them in one order.
pub fn in_own_layout<R: CubeRuntime>(t: CubeTensor<R>) -> (CubeTensor<R>, Layout) {
    let layout = own_layout(&t);
    (into_layout(t, layout), layout)
}

/// `t` with its memory in `layout`: itself when it is already, else a copy (tiled between
/// the two layouts).
pub fn into_layout<R: CubeRuntime>(t: CubeTensor<R>, layout: Layout) -> CubeTensor<R> {
    if has_layout(&t, layout) {
        return t;
    }
    let shape = t.shape();
    let rank = shape.num_dims();
    let (images, channels) = (shape[0], shape[1]);
    let positions: usize = (2..rank).map(|d| shape[d]).product();
    match layout {
        Layout::ChannelsFirst if has_layout(&t, Layout::ChannelsLast) => {
            // Seen in memory order, the tensor is a contiguous [B, S..., C] (`into_contiguous`
            // passes it as it is; it is there for odd strides of dimensions of size 1).
            let stored = into_contiguous(permute(t, &memory_order(Layout::ChannelsLast, rank)));
            transpose_on(stored, [images, positions, channels], shape)
        }
        Layout::ChannelsFirst => into_contiguous(t),
        Layout::ChannelsLast => {
            let order = memory_order(Layout::ChannelsLast, rank);
            let out = transpose_on(into_contiguous(t), [images, channels, positions], stored_shape(&shape, &order));
            permute(out, &inverse(&order))
        }
    }
}

/// A new tensor of `shape` and `dtype` on `like`'s device, its memory in `layout`.
pub fn empty_in<R: CubeRuntime>(layout: Layout, like: &CubeTensor<R>, shape: Shape, dtype: DType) -> CubeTensor<R> {
    let order = memory_order(layout, shape.num_dims());
    permute(crate::cube_util::empty_dense(like, stored_shape(&shape, &order), dtype), &inverse(&order))
}

/// `shape`'s sizes in the memory order `order` (outermost first): the shape of the
/// contiguous tensor that holds it.
fn stored_shape(shape: &Shape, order: &[usize]) -> Shape {
    Shape::from(order.iter().map(|&d| shape[d]).collect::<Vec<_>>())
}

/// The permutation that undoes `order`.
fn inverse(order: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; order.len()];
    for (i, &d) in order.iter().enumerate() {
        inv[d] = i;
    }
    inv
}
