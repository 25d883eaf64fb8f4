//! A sum over the units of a cube, for this crate's CubeCL kernels.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

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
