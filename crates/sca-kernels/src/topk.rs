//! The `k` largest entries of each row, selected on the GPU.
//!
//! Burn 0.21's CubeCL backends have no sort: `topk_with_indices` and `sort` read the whole
//! tensor back to the host and sort it there. The KNN search selects the 200 nearest of
//! every 4096 × 4096 similarity block that way, so each block went over PCIe and through a
//! full host sort (50,000 queries × 1.28M bank: about 4,000 blocks). [`top_k`] selects on
//! the device instead and hands back `rows × k` values and their column positions.
//!
//! The kernel (one cube per row) finds the k-th largest value exactly by building its bit
//! pattern from the top bit down: 32 counting passes over the row (its copy in shared
//! memory when it fits, as the KNN's 4,096-wide blocks do), each a count of the entries at
//! or above a candidate threshold. It then takes the entries above the threshold
//! and, of those equal to it, the leftmost ones, and writes them in column order. Floats are
//! compared by the order of `f32::total_cmp` (−NaN < −∞ < … < −0 < +0 < … < +∞ < +NaN),
//! the host selection's order.

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Int, Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::cubecl::prelude::CubeDim;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use crate::cube_util::grid_2d;
use crate::{is, same_type, CudaBackend};

/// The CubeCL kernel (its own module: CubeCL's `Tensor` and `Int` are not Burn's).
mod kernel {
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::prelude::*;

    use crate::cube_util::{cube_index, cube_sum};

    /// Units per cube: one row per cube, each unit counting every `UNITS`-th entry.
    pub(super) const UNITS: usize = 256;

    /// The order key of an f32: unsigned integers ordered as `f32::total_cmp` orders the floats.
    #[cube]
    fn order_key(x: f32) -> u32 {
        let bits = u32::reinterpret(x);
        let mut key = bits | 0x8000_0000u32;
        if bits >= 0x8000_0000u32 {
            key = bits ^ 0xFFFF_FFFFu32;
        }
        key
    }

    /// The float an order key came from (the inverse of [`order_key`], bit for bit).
    #[cube]
    fn key_value(key: u32) -> f32 {
        let mut bits = key ^ 0xFFFF_FFFFu32;
        if key >= 0x8000_0000u32 {
            bits = key ^ 0x8000_0000u32;
        }
        f32::reinterpret(bits)
    }

    /// The order key of column `j`: from the row's copy in shared memory when it has one.
    #[cube]
    fn key_at(input: &Tensor<f32>, keys: &SharedMemory<u32>, base: usize, j: usize, #[comptime] cached: bool) -> u32 {
        if cached {
            keys[j]
        } else {
            order_key(input[base + j])
        }
    }

    /// `cache`: 0, or a shared-memory capacity (in keys) at least the row length: the row's
    /// keys are then read from global memory once, not 33 times.
    #[cube(launch)]
    pub(super) fn row_topk_kernel<I: Int>(
        input: &Tensor<f32>,       // [rows, n], contiguous
        values: &mut Tensor<f32>,  // [rows, k]
        columns: &mut Tensor<I>,   // [rows, k]
        k: u32,
        #[comptime] units: usize,
        #[comptime] cache: usize,
        #[define(I)] _dtype: StorageType,
    ) {
        let rows = input.shape(0);
        let row = cube_index();
        if row >= rows {
            terminate!();
        }
        let n = input.shape(1);
        let base = row * n;
        let unit = UNIT_POS_X as usize;
        let mut shared = SharedMemory::<u32>::new(units);
        let cached = comptime![cache > 0];
        let mut keys = SharedMemory::<u32>::new(comptime![cache.max(1)]);
        if cached {
            let mut j = unit;
            while j < n {
                keys[j] = order_key(input[base + j]);
                j += units;
            }
            sync_cube();
        }

        // The k-th largest key: the largest t with at least k keys ≥ t, bit by bit from the top.
        let mut threshold = 0u32;
        for bit in 0..32u32 {
            let candidate = threshold | (0x8000_0000u32 >> bit);
            let mut count = 0u32;
            let mut j = unit;
            while j < n {
                if key_at(input, &keys, base, j, cached) >= candidate {
                    count += 1;
                }
                j += units;
            }
            if cube_sum(count, &mut shared) >= k {
                threshold = candidate;
            }
        }

        // Fewer than k keys lie above the threshold; the leftmost equal ones make up the rest.
        // Each unit takes a contiguous stretch of columns, so "leftmost" is a prefix over units.
        #[allow(clippy::manual_div_ceil)] // `div_ceil` has no CubeCL expansion
        let per = (n + units - 1) / units;
        let mut start = unit * per;
        if start > n {
            start = n;
        }
        let mut end = start + per;
        if end > n {
            end = n;
        }
        let mut above = 0u32;
        let mut equal = 0u32;
        for j in start..end {
            let key = key_at(input, &keys, base, j, cached);
            if key > threshold {
                above += 1;
            } else if key == threshold {
                equal += 1;
            }
        }
        let mut scan_above = SharedMemory::<u32>::new(units);
        let mut scan_equal = SharedMemory::<u32>::new(units);
        scan_above[unit] = above;
        scan_equal[unit] = equal;
        sync_cube();
        if unit == 0 {
            // Exclusive prefix sums over the units; the totals at index 0 of `shared`.
            let mut sum_above = 0u32;
            let mut sum_equal = 0u32;
            for u in 0..units {
                let a = scan_above[u];
                let e = scan_equal[u];
                scan_above[u] = sum_above;
                scan_equal[u] = sum_equal;
                sum_above += a;
                sum_equal += e;
            }
            shared[0] = sum_above;
        }
        sync_cube();
        let equal_wanted = k - shared[0];
        let equal_before = scan_equal[unit];
        let mut equal_taken_before = equal_before;
        if equal_taken_before > equal_wanted {
            equal_taken_before = equal_wanted;
        }
        let mut slot = scan_above[unit] + equal_taken_before;
        let mut equal_seen = equal_before;
        for j in start..end {
            let key = key_at(input, &keys, base, j, cached);
            let mut take = key > threshold;
            if key == threshold {
                take = equal_seen < equal_wanted;
                equal_seen += 1;
            }
            if take {
                let s = slot as usize;
                values[row * values.stride(0) + s * values.stride(1)] = key_value(key);
                columns[row * columns.stride(0) + s * columns.stride(1)] = I::cast_from(j);
                slot += 1;
            }
        }
    }
}

/// The `k` largest entries of each row of the f32 matrix `x` (`rows × n`, `k ≤ n`):
/// `(values, columns)`, both `rows × k`, in column order; columns as `index_dtype`.
/// Among equal values at the k-th place the leftmost are taken.
pub fn row_topk_on<R: CubeRuntime>(x: CubeTensor<R>, k: usize, index_dtype: DType) -> (CubeTensor<R>, CubeTensor<R>) {
    let [rows, n] = x.shape().dims::<2>();
    assert_eq!(x.dtype, DType::F32, "row_topk_on selects among f32 values");
    assert!(k <= n && k <= u32::MAX as usize, "k = {k} of a row of {n}");
    let x = into_contiguous(x);
    let client = x.client.clone();
    let values = crate::cube_util::empty_dense(&x, Shape::new([rows, k]), DType::F32);
    let columns = crate::cube_util::empty_dense(&x, Shape::new([rows, k]), index_dtype);
    if rows == 0 || k == 0 {
        return (values, columns);
    }
    // The row's keys in shared memory when they fit beside the three `UNITS`-long scratch
    // arrays (32 KB at most: 8,192 keys; the KNN's blocks are 4,096 wide).
    let shared_bytes = client.properties().hardware.max_shared_memory_size;
    let fits = (shared_bytes.saturating_sub(3 * kernel::UNITS * 4) / 4).min(8192);
    let capacity = if fits == 0 { 0 } else { 1 << fits.ilog2() };
    let cache = if n <= capacity { capacity } else { 0 };
    // Rows over a 2-D grid: a grid dimension holds at most 65,535 cubes on some runtimes.
    kernel::row_topk_kernel::launch::<R>(
        &client,
        grid_2d(rows),
        CubeDim::new_1d(kernel::UNITS as u32),
        x.into_tensor_arg(),
        values.clone().into_tensor_arg(),
        columns.clone().into_tensor_arg(),
        k as u32,
        kernel::UNITS,
        cache,
        index_dtype.into(),
    );
    (values, columns)
}

/// The `k` largest entries of each row of `x` and their column indices, `rows × k` each, in
/// no particular order; among equal values at the k-th place the leftmost are taken on the
/// GPU (elsewhere, whichever Burn's sort keeps), values in f32 there. On the binaries' CUDA backend (and on
/// `CubeBackend<Wgpu>` with the `wgpu` feature, for the tests) this is [`row_topk_on`]
/// on the device; on any other backend Burn's `topk_with_indices`, which sorts.
pub fn top_k<B: Backend>(x: Tensor<B, 2>, k: usize) -> (Tensor<B, 2>, Tensor<B, 2, Int>) {
    match on_device::<B, CudaBackend>(x, k) {
        Ok(r) => r,
        #[cfg(feature = "wgpu")]
        Err(x) => match on_device::<B, crate::WgpuBackend>(x, k) {
            Ok(r) => r,
            Err(x) => x.topk_with_indices(k, 1),
        },
        #[cfg(not(feature = "wgpu"))]
        Err(x) => x.topk_with_indices(k, 1),
    }
}

/// [`row_topk_on`] when `B` is the CubeCL backend `C` or its autodiff (whose inner tensors
/// it selects from, no gradient); `x` back otherwise.
#[allow(clippy::type_complexity)]
fn on_device<B: Backend, C: CubeKind>(x: Tensor<B, 2>, k: usize) -> Result<(Tensor<B, 2>, Tensor<B, 2, Int>), Tensor<B, 2>> {
    if is::<B, C>() {
        let (v, i) = C::top_k(same_type(x), k);
        return Ok((same_type(v), same_type(i)));
    }
    if is::<B, Autodiff<C>>() {
        let x: Tensor<Autodiff<C>, 2> = same_type(x);
        let (v, i) = C::top_k(x.inner(), k);
        return Ok((same_type(Tensor::<Autodiff<C>, 2>::from_inner(v)), same_type(Tensor::<Autodiff<C>, 2, Int>::from_inner(i))));
    }
    Err(x)
}

/// A CubeCL backend, for [`on_device`].
trait CubeKind: Backend {
    fn top_k(x: Tensor<Self, 2>, k: usize) -> (Tensor<Self, 2>, Tensor<Self, 2, Int>);
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> CubeKind for CubeBackend<R, F, I, BT> {
    fn top_k(x: Tensor<Self, 2>, k: usize) -> (Tensor<Self, 2>, Tensor<Self, 2, Int>) {
        let x = x.cast(FloatDType::F32).into_primitive().tensor();
        let (v, i) = row_topk_on(x, k, I::dtype());
        (Tensor::from_primitive(TensorPrimitive::Float(v)), Tensor::from_primitive(i))
    }
}
