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

use burn::tensor::{Shape, TensorMetadata};
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::ops::{permute_nchw_to_nhwc, permute_nhwc_to_nchw};
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
}

/// The contiguous `[batches, cols, rows]` transpose of the contiguous `[batches, rows, cols]`
/// tensor `t` (of any shape with that many elements), with shape `out_shape`.
pub fn transpose_on<R: CubeRuntime>(t: CubeTensor<R>, [batches, rows, cols]: [usize; 3], out_shape: Shape) -> CubeTensor<R> {
    assert!(t.is_contiguous(), "transpose_on reads a contiguous tensor");
    assert_eq!(t.shape().num_elements(), batches * rows * cols, "transpose_on: shape {:?} is not {batches} × {rows} × {cols}", t.shape());
    assert_eq!(out_shape.num_elements(), batches * rows * cols, "transpose_on: output shape {out_shape:?}");
    let out = empty_device_dtype(t.client.clone(), t.device.clone(), out_shape, t.dtype);
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
