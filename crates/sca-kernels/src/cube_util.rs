//! Pieces shared by this crate's CubeCL kernels: a sum over a cube's units, the 2-D grid
//! of cubes that lays out more cubes than one grid dimension holds, and dense outputs.

use burn::tensor::{DType, Shape};
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;

/// A new tensor on `like`'s device whose `shape` is stored densely, row-major: every kernel
/// of this crate writes its outputs by their place in memory. Burn's `empty_device*` ask
/// CubeCL for its "optimized" layout instead, which on CUDA (not on wgpu or the CPU) pads
/// each row, the last dimension, to an aligned pitch: a `[64, 64, 3, 3]` weight keeps rows
/// of 4 floats for 3, an `[N, C, 56, 56]` activation rows of 64 for 56. A kernel that wrote
/// such an output by memory position would have it read back scrambled
/// (`tests/dense_outputs.rs`).
pub(crate) fn empty_dense<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape, dtype: DType) -> CubeTensor<R> {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, dtype)
}

/// Cubes per grid dimension that every runtime accepts (wgpu's limit; CUDA's y and z).
const GRID_SIDE: usize = 65_535;

/// A grid of at least `cubes` cubes: rows of [`GRID_SIDE`]; a kernel finds its place in it
/// with [`cube_index`] (and skips indices past its work).
pub(crate) fn grid_2d(cubes: usize) -> CubeCount {
    CubeCount::Static(cubes.min(GRID_SIDE) as u32, cubes.div_ceil(GRID_SIDE) as u32, 1)
}

/// A [`grid_2d`] grid for `n` values, one per unit of `units`-unit cubes (at least one cube).
pub(crate) fn grid_for(n: usize, units: usize) -> CubeCount {
    grid_2d(n.div_ceil(units).max(1))
}

/// The most values of `like`'s type that one unit of an element-wise kernel over `n` of
/// them loads and stores at once: the widest of the device's vector loads that divides `n`
/// (4 `f32`s in 16 bytes on CUDA), else 1. The run a vector covers must also keep whatever
/// the kernel needs constant along it (e.g. a channel), so callers pass the length of such
/// runs as `n`. Wide loads take fewer, larger memory transactions and share the kernel's
/// index arithmetic over the vector's values.
pub(crate) fn vector_size<R: CubeRuntime>(like: &CubeTensor<R>, n: usize) -> usize {
    like.client.io_optimized_vector_sizes(like.dtype.size()).find(|&v| n.is_multiple_of(v)).unwrap_or(1)
}

/// This cube's index in a [`grid_2d`] grid.
#[cube]
pub(crate) fn cube_index() -> usize {
    (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize
}

/// Sums `part` over the cube's units (a power of two) through `shared` (at least as long):
/// every unit gets the sum, and `shared` may be written again at once.
#[cube]
pub(crate) fn cube_sum<N: Numeric>(part: N, shared: &mut SharedMemory<N>) -> N {
    let unit = UNIT_POS_X as usize;
    shared[unit] = part;
    sync_cube();
    // The cube's size read at run time: a value derived from a comptime one is a constant.
    let mut half = CUBE_DIM_X as usize / 2;
    while half > 0 {
        if unit < half {
            shared[unit] = shared[unit] + shared[unit + half];
        }
        sync_cube();
        half /= 2;
    }
    let total = shared[0];
    // No unit may overwrite `shared` for the next sum before every unit has read this one.
    sync_cube();
    total
}
