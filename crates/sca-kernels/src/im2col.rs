//! The patch matrices of a convolution as matmul (im2col), for [`crate::as_matmul`].
//!
//! `cols(X_n)` is the `[C·kh·kw, H'·W']` matrix whose column `p` holds the input values
//! output position `p` reads (zeros where it reads padding), rows channel-major and
//! tap-minor like the weight's `[O, C, kh, kw]` flattened. Built from tensor operations it
//! takes a zero-padded copy of the input and `kh·kw` shifted slices stacked: about
//! `2·kh·kw + 6` launches (the 7 × 7 stem: over a hundred) and every value copied twice. On
//! CubeCL backends [`Im2col::im2col`] is one kernel, one unit per output value; on Flex the
//! tensor operations, which are also what the kernel is tested against.
//!
//! The weight gradient wants the images of a group side by side along the reduction, so the
//! output is `[G, C·kh·kw, (N/G)·H'·W']` for `G` groups of consecutive images (`G = N`:
//! one matrix per image).

use burn::backend::Flex;
use burn::tensor::ops::{ConvOptions, FloatTensor};
use burn::tensor::{FloatDType, Shape, Slice, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::cubecl::prelude::CubeDim;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use crate::conv::output_size;
use crate::cube_util::grid_for;
use crate::matmul::MatmulKernels;

/// A backend's im2col (and its matmul, which the patches feed).
pub trait Im2col: MatmulKernels {
    /// `[N, C, H, W]` → `[G, C·kh·kw, (N/G)·H'·W']` for the `[kh, kw]` kernel and
    /// `options` (stride, padding, dilation), image `n` in group `n / (N/G)`; `G` divides
    /// `N`. A 1 × 1, stride-1, unpadded convolution with `G = N` is a view of `x`.
    fn im2col(x: FloatTensor<Self>, kernel: [usize; 2], options: &ConvOptions<2>, groups: usize) -> FloatTensor<Self>;

    /// Whether `x` is to be taken as rows of channels: channels-last activations are on
    /// ([`crate::layout::set_channels_last`]) and `x`'s memory is channels-last. Never on
    /// Flex, whose tensors are kept channels-first.
    fn channels_last_rows(_x: &FloatTensor<Self>) -> bool {
        false
    }

    /// The patches of a channels-last `[N, C, H, W]` tensor as rows: `[N·H'·W', kh·kw·C]`,
    /// one row per image and output position, its taps in order and each tap's channels
    /// contiguous (as the `[O, kh, kw, C]` weight is laid out). Only where
    /// [`Im2col::channels_last_rows`] holds.
    fn im2col_rows(_x: FloatTensor<Self>, _kernel: [usize; 2], _options: &ConvOptions<2>) -> FloatTensor<Self> {
        unreachable!("im2col_rows: no channels-last rows on this backend")
    }
}

/// A 1 × 1, stride-1, unpadded convolution: its patches are its input.
pub(crate) fn pointwise(k: [usize; 2], options: &ConvOptions<2>) -> bool {
    k == [1, 1] && options.stride == [1, 1] && options.padding == [0, 0]
}

/// The tensor-operation version, on any backend.
pub mod ops {
    use super::*;

    /// `t` with `[ph, pw]` zero rows and columns on each side, in `t`'s own float type.
    fn pad_zeros<B: burn::tensor::backend::Backend>(t: Tensor<B, 4>, [ph, pw]: [usize; 2]) -> Tensor<B, 4> {
        let dtype = FloatDType::from(t.dtype());
        let device = t.device();
        let zeros = |shape: [usize; 4]| Tensor::<B, 4>::zeros(shape, &device).cast(dtype);
        let [n, c, h, _] = t.dims();
        let t = if pw > 0 { Tensor::cat(vec![zeros([n, c, h, pw]), t, zeros([n, c, h, pw])], 3) } else { t };
        let w = t.dims()[3];
        if ph > 0 {
            Tensor::cat(vec![zeros([n, c, ph, w]), t, zeros([n, c, ph, w])], 2)
        } else {
            t
        }
    }

    /// [`Im2col::im2col`] from padding, shifted slices and a stack.
    pub fn im2col<B: burn::tensor::backend::Backend>(x: Tensor<B, 4>, k: [usize; 2], o: &ConvOptions<2>, groups: usize) -> Tensor<B, 3> {
        let [n, c, h, w] = x.dims();
        let [oh, ow] = output_size([h, w], k, o);
        let (l, ck) = (oh * ow, c * k[0] * k[1]);
        let cols = if pointwise(k, o) {
            x.reshape([n, c, h * w])
        } else {
            let xp = pad_zeros(x, o.padding);
            let all = Slice::new(0, None, 1);
            let taps: Vec<Tensor<B, 4>> = (0..k[0])
                .flat_map(|i| (0..k[1]).map(move |j| (i, j)))
                .map(|(i, j)| {
                    let (r0, c0) = ((i * o.dilation[0]) as isize, (j * o.dilation[1]) as isize);
                    let rows = Slice::new(r0, Some(r0 + ((oh - 1) * o.stride[0]) as isize + 1), o.stride[0] as isize);
                    let cols = Slice::new(c0, Some(c0 + ((ow - 1) * o.stride[1]) as isize + 1), o.stride[1] as isize);
                    xp.clone().slice([all, all, rows, cols])
                })
                .collect();
            Tensor::stack::<5>(taps, 2).reshape([n, ck, l])
        };
        // [N, rows, L] → [G, rows, per·L] (a copy unless one image per group).
        match n / groups {
            1 => cols,
            per => cols.reshape([groups, per, ck, l]).swap_dims(1, 2).reshape([groups, ck, per * l]),
        }
    }
}

impl Im2col for Flex {
    fn im2col(x: FloatTensor<Self>, kernel: [usize; 2], options: &ConvOptions<2>, groups: usize) -> FloatTensor<Self> {
        let x = Tensor::<Self, 4>::from_primitive(TensorPrimitive::Float(x));
        ops::im2col(x, kernel, options, groups).into_primitive().tensor()
    }
}

/// The CubeCL kernel (its own module: CubeCL's `Tensor` is not Burn's).
mod kernel {
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::prelude::*;

    use crate::cube_util::cube_index;

    pub(super) const UNITS: usize = 256;

    /// `out[g, (c, i, j), q·L + (y, x)] = x[g·per + q, c, y·sh + i·dh − ph, x·sw + j·dw − pw]`
    /// (0 outside the input) for `L = H'·W'`, one unit per output value, consecutive units
    /// along output positions (reads along input rows at stride 1).
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn im2col_kernel<F: Numeric>(
        x: &Tensor<F>,
        out: &mut Tensor<F>,
        channels: u32,
        h: u32,
        w: u32,
        oh: u32,
        ow: u32,
        kh: u32,
        kw: u32,
        sh: u32,
        sw: u32,
        ph: u32,
        pw: u32,
        dh: u32,
        dw: u32,
        per: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let i = cube_index() * UNITS + UNIT_POS_X as usize;
        if i >= out.len() {
            terminate!();
        }
        let h = h as usize;
        let w = w as usize;
        let ow = ow as usize;
        let kw = kw as usize;
        let taps = kh as usize * kw;
        let l = oh as usize * ow;
        let row_len = per as usize * l;
        let rows = channels as usize * taps;
        let image = (i / (rows * row_len)) * per as usize + (i % row_len) / l;
        let row = (i / row_len) % rows;
        let p = i % l;
        let tap = row % taps;
        // Input coordinates plus the padding (no negative values in unsigned arithmetic).
        let y = (p / ow) * sh as usize + (tap / kw) * dh as usize;
        let xx = (p % ow) * sw as usize + (tap % kw) * dw as usize;
        let ph = ph as usize;
        let pw = pw as usize;
        let mut v = F::from_int(0);
        if y >= ph && y < h + ph && xx >= pw && xx < w + pw {
            v = x[((image * channels as usize + row / taps) * h + (y - ph)) * w + (xx - pw)];
        }
        out[i] = v;
    }

    /// `out[(n, y, x), (i, j, c)] = x[n, y·sh + i·dh − ph, x·sw + j·dw − pw, c]` (0 outside
    /// the input) from channels-last memory, one unit per output value, consecutive units
    /// along a tap's channels (reads along the input's channels at stride 1).
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn im2col_rows_kernel<F: Numeric>(
        x: &Tensor<F>,
        out: &mut Tensor<F>,
        channels: u32,
        h: u32,
        w: u32,
        oh: u32,
        ow: u32,
        kw: u32,
        sh: u32,
        sw: u32,
        ph: u32,
        pw: u32,
        dh: u32,
        dw: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let i = cube_index() * UNITS + UNIT_POS_X as usize;
        if i >= out.len() {
            terminate!();
        }
        let channels = channels as usize;
        let h = h as usize;
        let w = w as usize;
        let ow = ow as usize;
        let kw = kw as usize;
        let cols = out.shape(1);
        let row = i / cols;
        let col = i % cols;
        let tap = col / channels;
        let c = col % channels;
        let l = oh as usize * ow;
        let image = row / l;
        let p = row % l;
        // Input coordinates plus the padding (no negative values in unsigned arithmetic).
        let y = (p / ow) * sh as usize + (tap / kw) * dh as usize;
        let xx = (p % ow) * sw as usize + (tap % kw) * dw as usize;
        let ph = ph as usize;
        let pw = pw as usize;
        let mut v = F::from_int(0);
        if y >= ph && y < h + ph && xx >= pw && xx < w + pw {
            v = x[((image * h + (y - ph)) * w + (xx - pw)) * channels + c];
        }
        out[i] = v;
    }
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> Im2col for CubeBackend<R, F, I, BT> {
    fn channels_last_rows(x: &FloatTensor<Self>) -> bool {
        crate::layout::channels_last() && crate::layout::layout_of(x) == Some(crate::layout::Layout::ChannelsLast)
    }

    fn im2col_rows(x: FloatTensor<Self>, k: [usize; 2], o: &ConvOptions<2>) -> FloatTensor<Self> {
        let [n, c, h, w] = x.shape().dims::<4>();
        let [oh, ow] = output_size([h, w], k, o);
        let x = crate::layout::into_layout(x, crate::layout::Layout::ChannelsLast);
        let out = crate::cube_util::empty_dense(&x, Shape::new([n * oh * ow, k[0] * k[1] * c]), x.dtype);
        if out.shape().num_elements() == 0 {
            return out;
        }
        let u = |v: usize| u32::try_from(v).expect("im2col_rows: a size past u32");
        let dtype = x.dtype;
        kernel::im2col_rows_kernel::launch::<R>(
            &x.client.clone(),
            grid_for(out.shape().num_elements(), kernel::UNITS),
            CubeDim::new_1d(kernel::UNITS as u32),
            x.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            u(c),
            u(h),
            u(w),
            u(oh),
            u(ow),
            u(k[1]),
            u(o.stride[0]),
            u(o.stride[1]),
            u(o.padding[0]),
            u(o.padding[1]),
            u(o.dilation[0]),
            u(o.dilation[1]),
            dtype.into(),
        );
        out
    }

    fn im2col(x: FloatTensor<Self>, k: [usize; 2], o: &ConvOptions<2>, groups: usize) -> FloatTensor<Self> {
        let [n, c, h, w] = x.shape().dims::<4>();
        assert!(groups > 0 && n.is_multiple_of(groups), "im2col: {groups} groups do not divide {n} images");
        let [oh, ow] = output_size([h, w], k, o);
        let (per, ck, l) = (n / groups, c * k[0] * k[1], oh * ow);
        if pointwise(k, o) && per == 1 {
            let x = Tensor::<Self, 4>::from_primitive(TensorPrimitive::Float(x));
            return x.reshape([n, c, h * w]).into_primitive().tensor();
        }
        let x = into_contiguous(x);
        let out = crate::cube_util::empty_dense(&x, Shape::new([groups, ck, per * l]), x.dtype);
        if out.shape().num_elements() == 0 {
            return out;
        }
        let u = |v: usize| u32::try_from(v).expect("im2col: a size past u32");
        let dtype = x.dtype;
        kernel::im2col_kernel::launch::<R>(
            &x.client.clone(),
            grid_for(out.shape().num_elements(), kernel::UNITS),
            CubeDim::new_1d(kernel::UNITS as u32),
            x.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            u(c),
            u(h),
            u(w),
            u(oh),
            u(ow),
            u(k[0]),
            u(k[1]),
            u(o.stride[0]),
            u(o.stride[1]),
            u(o.padding[0]),
            u(o.padding[1]),
            u(o.dilation[0]),
            u(o.dilation[1]),
            u(per),
            dtype.into(),
        );
        out
    }
}
