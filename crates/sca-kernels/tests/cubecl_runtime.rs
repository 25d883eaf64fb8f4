//! The CubeCL side of the explicit kernels on a real CubeCL runtime without a GPU: wgpu on
//! Mesa's software Vulkan (lavapipe, Debian package `mesa-vulkan-drivers`). The CUDA backend
//! runs this same code (`CubeBackend<R, ..>` for any runtime `R`): the plan lookup, the
//! launches through cubek, their refusals and the fallbacks after them, the `matmul`
//! kernel's im2col and grouped weight gradient on CubeCL tensors, and the autodiff operation
//! over all of it. lavapipe has no cooperative-matrix unit, so cubek's convolution kernels
//! refuse every shape there (on a device that has one they must give Flex's answer); the
//! `matmul` kernel and the fallbacks run.
//!
//! Without a Vulkan device the tests say so and pass, unless `SCA_REQUIRE_VULKAN` is set (CI
//! sets it after installing lavapipe, so there they cannot be skipped).

use std::sync::OnceLock;

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
use burn::tensor::{DType, Distribution, FloatDType, Tensor, TensorPrimitive};
use burn_cubecl::CubeBackend;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
use sca_kernels::conv::{conv_shape, data_on, forward_on, weight_on, ConvKernels};
use sca_kernels::matmul::MatmulKernels;
use sca_kernels::plan::{use_plan, ConvKernel, ConvPlan, Pass};
use sca_kernels::ExplicitOps;

type W = CubeBackend<WgpuRuntime, f32, i32, u32>;

/// A convolution case: input `[2, c, h, w]`, weight `[o, c, k, k]`, stride, padding, dilation.
#[derive(Clone, Copy, Debug)]
struct Case {
    c: usize,
    o: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
    hw: [usize; 2],
}

impl Case {
    fn options(&self) -> ConvOptions<2> {
        ConvOptions::new([self.s; 2], [self.p; 2], [self.d; 2], 1)
    }
    fn x_shape(&self) -> [usize; 4] {
        [2, self.c, self.hw[0], self.hw[1]]
    }
    fn w_shape(&self) -> [usize; 4] {
        [self.o, self.c, self.k, self.k]
    }
    fn key(&self, dtype: DType) -> String {
        conv_shape(&self.x_shape().into(), &self.w_shape().into(), &self.options(), dtype).to_string()
    }
}

/// ResNet's kinds of convolution: 1×1, strided 1×1 (downsample), 3×3 at stride 1 and 2, the
/// 7×7 stride-2 stem on 3 channels, a dilated 3×3, odd sides.
const PLANNED: [Case; 6] = [
    Case { c: 8, o: 16, k: 1, s: 1, p: 0, d: 1, hw: [6, 6] },
    Case { c: 8, o: 16, k: 1, s: 2, p: 0, d: 1, hw: [7, 7] },
    Case { c: 8, o: 12, k: 3, s: 1, p: 1, d: 1, hw: [6, 5] },
    Case { c: 8, o: 12, k: 3, s: 2, p: 1, d: 1, hw: [7, 7] },
    Case { c: 3, o: 8, k: 7, s: 2, p: 3, d: 1, hw: [15, 13] },
    Case { c: 4, o: 8, k: 3, s: 1, p: 2, d: 2, hw: [9, 9] },
];

/// Shapes the plan does not list: they run its default, a cubek kernel.
const UNPLANNED: [Case; 2] = [
    Case { c: 5, o: 7, k: 3, s: 1, p: 1, d: 1, hw: [6, 6] },
    Case { c: 5, o: 7, k: 3, s: 2, p: 1, d: 1, hw: [7, 6] },
];

/// The wgpu device with the tests' plan in place, or `None` (said once) without Vulkan.
fn device() -> Option<WgpuDevice> {
    static DEVICE: OnceLock<Option<WgpuDevice>> = OnceLock::new();
    DEVICE
        .get_or_init(|| {
            // Every listed shape on `matmul` in all passes (the strided 3×3 in f16 too); the
            // rest on a cubek kernel.
            let mut plan = format!(r#"{{"device": "lavapipe", "batch": 2, "default": {}, "shapes": {{"#, all_passes("specialized_tma_mma"));
            let keys = PLANNED.iter().map(|c| c.key(DType::F32)).chain([PLANNED[3].key(DType::F16)]);
            let shapes: Vec<String> = keys.map(|key| format!(r#""{key}": {}"#, all_passes("matmul"))).collect();
            plan += &shapes.join(", ");
            plan += "}}";
            use_plan(ConvPlan::parse(&plan).unwrap());
            sca_kernels::cubecl_test_device::<W>()
        })
        .clone()
}

fn all_passes(kernel: &str) -> String {
    format!(r#"{{"forward": "{kernel}", "data": "{kernel}", "weight": "{kernel}"}}"#)
}

fn random(shape: [usize; 4], seed: u64) -> Tensor<Flex, 4> {
    <Flex as Backend>::seed(&Default::default(), seed);
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn on_wgpu(t: &Tensor<Flex, 4>, device: &WgpuDevice) -> FloatTensor<W> {
    Tensor::<W, 4>::from_data(t.to_data(), device).into_primitive().tensor()
}

fn back(t: FloatTensor<W>) -> Tensor<Flex, 4> {
    Tensor::from_data(Tensor::<W, 4>::from_primitive(TensorPrimitive::Float(t)).into_data(), &Default::default())
}

/// Largest difference relative to the reference's largest magnitude.
fn rel_err<const D: usize>(got: &Tensor<Flex, D>, want: &Tensor<Flex, D>) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let scale = want.clone().abs().max().into_scalar();
    assert!(scale > 1e-3, "degenerate reference");
    (got.clone() - want.clone()).abs().max().into_scalar() / scale
}

/// An autodiff operation's output and its two input gradients on wgpu, each within 1e-5 of
/// the reference on Flex.
fn assert_output_and_grads<const D: usize>(got: [Tensor<W, D>; 3], want: &[Tensor<Flex, D>; 3], inputs: [&str; 2], case: &str) {
    let names = ["output".to_string(), format!("{} grad", inputs[0]), format!("{} grad", inputs[1])];
    for ((got, want), what) in got.into_iter().zip(want).zip(names) {
        let e = rel_err(&Tensor::<Flex, D>::from_data(got.into_data(), &Default::default()), want);
        assert!(e < 1e-5, "{case} {what}: off by {e}");
    }
}

/// Flex's output, data gradient and weight gradient for `case` with output gradient `dy`.
fn reference(case: &Case, x: &Tensor<Flex, 4>, w: &Tensor<Flex, 4>, dy: &Tensor<Flex, 4>) -> [Tensor<Flex, 4>; 3] {
    let (x, w, dy, o) = (x.clone().into_primitive().tensor(), w.clone().into_primitive().tensor(), dy.clone().into_primitive().tensor(), case.options());
    let t = |p: FloatTensor<Flex>| Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(p));
    [
        t(Flex::conv2d(x.clone(), w.clone(), None, o.clone())),
        t(Flex::conv2d_x_backward(x.clone(), w.clone(), dy.clone(), o.clone())),
        t(Flex::conv2d_weight_backward(x, w, dy, o)),
    ]
}

/// Random operands for `case`: x, weight and an output gradient of the output's shape.
fn operands(case: &Case, seed: u64) -> [Tensor<Flex, 4>; 3] {
    let (x, w) = (random(case.x_shape(), seed), random(case.w_shape(), seed + 1));
    let y = Flex::conv2d(x.clone().into_primitive().tensor(), w.clone().into_primitive().tensor(), None, case.options());
    let dy = random(Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(y)).dims(), seed + 2);
    [x, w, dy]
}

#[test]
fn the_matmul_kernel_runs_every_pass_on_cubecl_tensors() {
    let Some(device) = device() else { return };
    for (i, case) in PLANNED.iter().enumerate() {
        let [x, w, dy] = operands(case, 10 * i as u64);
        let want = reference(case, &x, &w, &dy);
        let (xw, ww, dyw, o) = (on_wgpu(&x, &device), on_wgpu(&w, &device), on_wgpu(&dy, &device), case.options());
        // Called directly, with no fallback: an error here is the kernel's own.
        let forward = forward_on(ConvKernel::Matmul, xw.clone(), ww.clone(), &o).unwrap_or_else(|e| panic!("{case:?}: {e:?}"));
        let weight = weight_on(ConvKernel::Matmul, xw.clone(), dyw.clone(), w.shape(), &o).unwrap_or_else(|e| panic!("{case:?}: {e:?}"));
        let mut got = vec![("forward", back(forward), &want[0]), ("weight", back(weight), &want[2])];
        if case.s == 1 {
            let data = data_on(ConvKernel::Matmul, dyw.clone(), ww.clone(), x.shape(), &o).unwrap_or_else(|e| panic!("{case:?}: {e:?}"));
            got.push(("data", back(data), &want[1]));
        }
        // Through the plan, which names `matmul` for this shape (strided data gradients by
        // way of the zero-spread output gradient).
        got.push(("planned forward", back(W::conv_fwd(xw.clone(), ww.clone(), o.clone())), &want[0]));
        got.push(("planned data", back(W::conv_dgrad(xw.clone(), ww.clone(), dyw.clone(), o.clone())), &want[1]));
        got.push(("planned weight", back(W::conv_wgrad(xw, ww, dyw, o)), &want[2]));
        for (what, g, w) in got {
            let e = rel_err(&g, w);
            assert!(e < 1e-5, "{case:?} {what}: off by {e}");
        }
    }
}

#[test]
fn kernels_that_refuse_a_shape_give_way_and_the_answer_stays_right() {
    let Some(device) = device() else { return };
    for (i, case) in UNPLANNED.iter().enumerate() {
        let [x, w, dy] = operands(case, 100 + 10 * i as u64);
        let want = reference(case, &x, &w, &dy);
        let (xw, ww, dyw, o) = (on_wgpu(&x, &device), on_wgpu(&w, &device), on_wgpu(&dy, &device), case.options());
        // Each of cubek's kernels either refuses (an error, not a panic) or is right.
        for kernel in ConvKernel::all().into_iter().filter(|&k| k != ConvKernel::Matmul) {
            let runs = [
                (Pass::Forward, forward_on(kernel, xw.clone(), ww.clone(), &o), &want[0]),
                (Pass::Data, data_on(kernel, dyw.clone(), ww.clone(), x.shape(), &o), &want[1]),
                (Pass::Weight, weight_on(kernel, xw.clone(), dyw.clone(), w.shape(), &o), &want[2]),
            ];
            for (pass, result, want) in runs {
                if let Ok(got) = result {
                    let e = rel_err(&back(got), want);
                    // TF32 on tensor cores: 10 mantissa bits.
                    assert!(e < 5e-3, "{case:?} {pass} on {kernel}: off by {e}");
                }
            }
        }
        // Through the plan: its default kernel, then `matmul` (untuned), then Burn's own.
        let got = [
            back(W::conv_fwd(xw.clone(), ww.clone(), o.clone())),
            back(W::conv_dgrad(xw.clone(), ww.clone(), dyw.clone(), o.clone())),
            back(W::conv_wgrad(xw, ww, dyw, o)),
        ];
        for (pass, g, w) in [(Pass::Forward, &got[0], &want[0]), (Pass::Data, &got[1], &want[1]), (Pass::Weight, &got[2], &want[2])] {
            let e = rel_err(g, w);
            assert!(e < 5e-3, "{case:?} planned {pass}: off by {e}");
            // Where cubek refused (every shape on lavapipe), `matmul` took over, not Burn's
            // autotuned kernels.
            let refused = format!("convolution {pass} pass of {} on ", case.key(DType::F32));
            let fallbacks: Vec<_> = sca_kernels::fallbacks().into_iter().filter(|f| f.what.starts_with(&refused)).collect();
            if let Some(last) = fallbacks.last() {
                assert_eq!(last.instead, "matmul", "{case:?} {pass}: {fallbacks:?}");
                assert!(fallbacks.iter().all(|f| f.instead != "the backend's own kernel"), "{case:?} {pass}: {fallbacks:?}");
            }
        }
    }
}

#[test]
fn the_autodiff_convolution_gives_conv2d_gradients_on_cubecl() {
    let Some(device) = device() else { return };
    type A = Autodiff<W>;
    // Planned on `matmul` (strided), and an unplanned stride-1 shape whose passes are on
    // cubek's kernels: the output gradient goes to both channels-last (`backward_grad`),
    // and, cubek refusing here, on to the fallback as an NCHW view of NHWC memory.
    for (i, case) in [PLANNED[3], PLANNED[4], UNPLANNED[0]].iter().enumerate() {
        let [x, w, dy] = operands(case, 200 + 10 * i as u64);
        let want = reference(case, &x, &w, &dy);
        let xa = Tensor::<A, 4>::from_data(x.to_data(), &device).require_grad();
        let wa = Tensor::<A, 4>::from_data(w.to_data(), &device).require_grad();
        let y = Tensor::<A, 4>::from_primitive(TensorPrimitive::Float(A::gemm_conv(
            xa.clone().into_primitive().tensor(),
            wa.clone().into_primitive().tensor(),
            case.options(),
        )));
        // d(sum(y·dy))/dy = dy: the backward pass gets exactly the reference's output gradient.
        let grads = (y.clone() * Tensor::<A, 4>::from_data(dy.to_data(), &device)).sum().backward();
        let got = [y.inner(), xa.grad(&grads).unwrap(), wa.grad(&grads).unwrap()];
        assert_output_and_grads(got, &want, ["x", "weight"], &format!("{case:?}"));
    }
}

#[test]
fn the_explicit_matmul_runs_on_cubecl() {
    let Some(device) = device() else { return };
    <Flex as Backend>::seed(&Default::default(), 7);
    let a = Tensor::<Flex, 3>::random([3, 5, 70], Distribution::Normal(0.0, 1.0), &Default::default());
    let b = Tensor::<Flex, 3>::random([3, 70, 9], Distribution::Normal(0.0, 1.0), &Default::default());
    let want = a.clone().matmul(b.clone());
    let on = |t: &Tensor<Flex, 3>| Tensor::<W, 3>::from_data(t.to_data(), &device).into_primitive().tensor();
    let got = Tensor::<W, 3>::from_primitive(TensorPrimitive::Float(W::mm(on(&a), on(&b))));
    let got = Tensor::<Flex, 3>::from_data(got.into_data(), &Default::default());
    let e = rel_err(&got, &want);
    assert!(e < 1e-5, "off by {e}");
    // One entry by hand: batch 1, row 2, column 4.
    let (ad, bd) = (a.to_data().to_vec::<f32>().unwrap(), b.to_data().to_vec::<f32>().unwrap());
    let by_hand: f32 = (0..70).map(|k| ad[350 + 2 * 70 + k] * bd[630 + k * 9 + 4]).sum();
    let entry = got.to_data().to_vec::<f32>().unwrap()[45 + 2 * 9 + 4];
    assert!((by_hand - entry).abs() < 1e-4, "{entry} against {by_hand} by hand");
}

/// The `matmul` kernel runs on a backend typed f32 whatever the tensors hold (as bf16 runs on
/// CUDA do): half-precision operands must give half-precision results, right to f16's
/// rounding.
#[test]
fn the_matmul_kernel_keeps_half_precision_tensors_half() {
    let Some(device) = device() else { return };
    let case = PLANNED[3];
    let [x, w, dy] = operands(&case, 300);
    let want = reference(&case, &x, &w, &dy);
    let half = |t: &Tensor<Flex, 4>| Tensor::<W, 4>::from_data(t.to_data(), &device).cast(FloatDType::F16).into_primitive().tensor();
    let (xw, ww, dyw, o) = (half(&x), half(&w), half(&dy), case.options());
    // Forward and weight gradient on `matmul` directly (an error is the kernel's own); the
    // strided data gradient through the plan, which names `matmul` for this shape in f16.
    let outs = [
        forward_on(ConvKernel::Matmul, xw.clone(), ww.clone(), &o).unwrap_or_else(|e| panic!("{e:?}")),
        W::conv_dgrad(xw.clone(), ww.clone(), dyw.clone(), o.clone()),
        weight_on(ConvKernel::Matmul, xw, dyw, w.shape(), &o).unwrap_or_else(|e| panic!("{e:?}")),
    ];
    for (what, got, want) in [("forward", &outs[0], &want[0]), ("data", &outs[1], &want[1]), ("weight", &outs[2], &want[2])] {
        assert_eq!(got.dtype, DType::F16, "{what}");
        let got = Tensor::<W, 4>::from_primitive(TensorPrimitive::Float(got.clone())).cast(FloatDType::F32);
        let e = rel_err(&back(got.into_primitive().tensor()), want);
        assert!(e < 5e-3, "{what}: off by {e}");
    }
}

/// The matmul's gradients multiply by transposed views (`dC·Bᵀ`, `Aᵀ·dC`): cubek's matmul must
/// read those strides right.
#[test]
fn the_autodiff_matmul_gives_matmul_gradients_on_cubecl() {
    let Some(device) = device() else { return };
    type A = Autodiff<W>;
    type F = Autodiff<Flex>;
    <Flex as Backend>::seed(&Default::default(), 11);
    let (a, b, g) = (
        Tensor::<Flex, 3>::random([3, 5, 70], Distribution::Normal(0.0, 1.0), &Default::default()),
        Tensor::<Flex, 3>::random([3, 70, 9], Distribution::Normal(0.0, 1.0), &Default::default()),
        Tensor::<Flex, 3>::random([3, 5, 9], Distribution::Normal(0.0, 1.0), &Default::default()),
    );
    // Flex's own matmul and autodiff: the reference.
    let (af, bf) = (Tensor::<F, 3>::from_data(a.to_data(), &Default::default()).require_grad(), Tensor::<F, 3>::from_data(b.to_data(), &Default::default()).require_grad());
    let grads = (af.clone().matmul(bf.clone()) * Tensor::<F, 3>::from_data(g.to_data(), &Default::default())).sum().backward();
    let want = [af.clone().matmul(bf.clone()).inner(), af.grad(&grads).unwrap(), bf.grad(&grads).unwrap()];
    let (aw, bw) = (Tensor::<A, 3>::from_data(a.to_data(), &device).require_grad(), Tensor::<A, 3>::from_data(b.to_data(), &device).require_grad());
    let y = Tensor::<A, 3>::from_primitive(TensorPrimitive::Float(A::gemm_mm(aw.clone().into_primitive().tensor(), bw.clone().into_primitive().tensor())));
    let grads = (y.clone() * Tensor::<A, 3>::from_data(g.to_data(), &device)).sum().backward();
    let got = [y.inner(), aw.grad(&grads).unwrap(), bw.grad(&grads).unwrap()];
    assert_output_and_grads(got, &want, ["a", "b"], "matmul");
}

/// Each row's k largest by `f32::total_cmp`, leftmost first among equals, listed in column
/// order: what `row_topk_on` must return, computed by a plain sort.
fn top_k_by_sort(data: &[f32], n: usize, k: usize) -> (Vec<f32>, Vec<i64>) {
    let (mut values, mut columns) = (Vec::new(), Vec::new());
    for row in data.chunks(n) {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let mut kept = order[..k].to_vec();
        kept.sort_unstable();
        values.extend(kept.iter().map(|&j| row[j]));
        columns.extend(kept.iter().map(|&j| j as i64));
    }
    (values, columns)
}

/// The GPU selection of the KNN search: exact against a sort, ties (leftmost kept) and
/// signed zeros, infinities and NaNs (in `total_cmp`'s order) included, on rows shorter and
/// longer than the cube's 256 units, with the row's keys in shared memory (lavapipe's 32 KB
/// hold 4,096) and, for the 4,100-wide rows, read from global memory.
#[test]
fn row_topk_selects_what_a_sort_selects() {
    let Some(device) = device() else { return };
    let special = [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, 1e-40, -1e-40];
    for (rows, n, k, ties) in [(1, 1, 1, false), (3, 5, 2, false), (4, 300, 7, false), (2, 4100, 200, false), (3, 300, 300, false), (5, 1000, 1, false), (4, 600, 50, true), (2, 9, 4, true)] {
        <Flex as Backend>::seed(&Default::default(), (rows * n + k) as u64);
        let x = Tensor::<Flex, 2>::random([rows, n], Distribution::Normal(0.0, 1.0), &Default::default());
        let mut data: Vec<f32> = x.into_data().to_vec().unwrap();
        if ties {
            // Values on a coarse grid: long runs of equal values across the k-th place.
            data.iter_mut().for_each(|v| *v = (*v * 2.0).round() / 2.0);
        }
        if n >= 9 {
            for (r, row) in data.chunks_mut(n).enumerate() {
                row[r % 2..r % 2 + special.len()].copy_from_slice(&special);
            }
        }
        let on = Tensor::<W, 2>::from_data(burn::tensor::TensorData::new(data.clone(), [rows, n]), &device);
        let (values, columns) = sca_kernels::topk::row_topk_on(on.into_primitive().tensor(), k, DType::I32);
        let values: Vec<f32> = Tensor::<W, 2>::from_primitive(TensorPrimitive::Float(values)).into_data().to_vec().unwrap();
        let columns: Vec<i64> = Tensor::<W, 2, burn::tensor::Int>::from_primitive(columns).into_data().convert::<i64>().to_vec().unwrap();
        let (want_values, want_columns) = top_k_by_sort(&data, n, k);
        assert_eq!(columns, want_columns, "columns, {rows}×{n} k={k} ties={ties}");
        let same = |a: &f32, b: &f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan() && a.is_sign_negative() == b.is_sign_negative());
        assert!(values.iter().zip(&want_values).all(|(a, b)| same(a, b)), "values, {rows}×{n} k={k}: {values:?} against {want_values:?}");
    }
}

/// The tiled layout copies against Burn's permute: sides that are and are not multiples of
/// the 32-wide tile, a 3-channel stem input, 1×1 sides, in f32 and f16; and a tensor whose
/// memory is already channels-last passes through as a view of the same buffer.
/// The im2col kernel copies exactly what the tensor-operation version (Flex's) builds: every
/// kind of convolution of ResNet, one matrix per image and images grouped side by side (as
/// the weight gradient takes them), a pointwise one grouped (no view then), f32 and f16.
#[test]
fn im2col_kernel_matches_the_tensor_operations() {
    use sca_kernels::im2col::{ops, Im2col};
    let Some(device) = device() else { return };
    let pointwise_grouped = Case { c: 3, o: 1, k: 1, s: 1, p: 0, d: 1, hw: [5, 4] };
    for (i, case) in PLANNED.iter().chain([&pointwise_grouped]).enumerate() {
        for (images, groups) in [(2, 2), (2, 1), (6, 3)] {
            let shape = [images, case.c, case.hw[0], case.hw[1]];
            let x = random(shape, 500 + i as u64);
            let want = ops::im2col(x.clone(), [case.k; 2], &case.options(), groups);
            for dtype in [FloatDType::F32, FloatDType::F16] {
                let xw = Tensor::<W, 4>::from_data(x.to_data(), &device).cast(dtype);
                let got = W::im2col(xw.into_primitive().tensor(), [case.k; 2], &case.options(), groups);
                let got = Tensor::<W, 3>::from_primitive(TensorPrimitive::Float(got)).cast(FloatDType::F32);
                let want = Tensor::<W, 3>::from_data(want.to_data(), &device).cast(dtype).cast(FloatDType::F32);
                assert_eq!(got.into_data(), want.into_data(), "{case:?}, {images} images in {groups} groups, {dtype:?}");
            }
        }
    }
}

/// `relu(a + b)` as one operation on the CubeCL kernels against Burn's `relu(a + b)` on Flex:
/// output and both inputs' gradients, with sums exactly 0 (the ReLU passes no gradient
/// there); and the forward kernel alone in f16. Sizes of 240 (four values per unit), 210
/// (two) and 105 (one).
#[test]
fn add_relu_kernels_match_relu_of_the_sum() {
    let Some(device) = device() else { return };
    for (i, shape) in [[2, 4, 6, 5], [2, 3, 7, 5], [1, 3, 7, 5]].into_iter().enumerate() {
        add_relu_matches_relu_of_the_sum(shape, 600 + 10 * i as u64, &device);
    }
}

fn add_relu_matches_relu_of_the_sum(shape: [usize; 4], seed: u64, device: &WgpuDevice) {
    let device = device.clone();
    let a = random(shape, seed);
    // Every third value of b is −a: sums of exactly 0.
    let b = random(shape, seed + 1);
    let n = a.shape().num_elements();
    let third = Tensor::<Flex, 1>::from_floats(&(0..n).map(|i| (i % 3 == 0) as i32 as f32).collect::<Vec<_>>()[..], &Default::default()).reshape(shape);
    let b = b.clone() * (third.clone().neg() + 1.0) - a.clone() * third;
    let dy = random(shape, seed + 2);
    fn run<T: Backend>(a: &Tensor<Flex, 4>, b: &Tensor<Flex, 4>, dy: &Tensor<Flex, 4>, fused: bool, device: &T::Device) -> [Tensor<Flex, 4>; 3] {
        let on = |t: &Tensor<Flex, 4>| Tensor::<Autodiff<T>, 4>::from_data(t.to_data(), device).require_grad();
        let (a, b) = (on(a), on(b));
        let y = if fused { sca_kernels::add_relu(a.clone(), b.clone()) } else { burn::tensor::activation::relu(a.clone() + b.clone()) };
        let grads = (y.clone() * Tensor::<Autodiff<T>, 4>::from_data(dy.to_data(), device)).sum().backward();
        let flex = |t: Tensor<T, 4>| Tensor::<Flex, 4>::from_data(t.into_data(), &Default::default());
        [flex(y.inner()), flex(a.grad(&grads).unwrap()), flex(b.grad(&grads).unwrap())]
    }
    let want = run::<Flex>(&a, &b, &dy, false, &Default::default());
    let zeros = want[1].clone().equal_elem(0.0).int().sum().into_scalar();
    assert!(zeros as usize >= n / 3, "the exact zeros pass no gradient");
    let on_flex = run::<Flex>(&a, &b, &dy, true, &Default::default());
    for ((g, w), part) in on_flex.iter().zip(&want).zip(["output", "a grad", "b grad"]) {
        assert_eq!(g.to_data(), w.to_data(), "fused on Flex: {part}");
    }
    for (fused, what) in [(true, "fused on wgpu"), (false, "Burn's on wgpu")] {
        let got = run::<W>(&a, &b, &dy, fused, &device);
        for ((g, w), part) in got.iter().zip(&want).zip(["output", "a grad", "b grad"]) {
            assert_eq!(g.to_data(), w.to_data(), "{shape:?} {what}: {part}");
        }
    }
    // `a` channels-last in memory, `b` not: the output and both gradients keep `a`'s order.
    {
        use sca_kernels::layout::{has_layout, Layout};
        let on = |t: &Tensor<Flex, 4>, last: bool| match last {
            false => Tensor::<Autodiff<W>, 4>::from_data(t.to_data(), &device),
            true => Tensor::<Autodiff<W>, 4>::from_data(t.clone().permute([0, 2, 3, 1]).to_data(), &device).permute([0, 3, 1, 2]),
        }
        .require_grad();
        let (al, bf) = (on(&a, true), on(&b, false));
        let y = sca_kernels::add_relu(al.clone(), bf.clone());
        let grads = (y.clone() * Tensor::<Autodiff<W>, 4>::from_data(dy.to_data(), &device)).sum().backward();
        let memory = |t: Tensor<W, 4>| t.into_primitive().tensor();
        let out = memory(y.clone().inner());
        assert!(has_layout(&out, Layout::ChannelsLast), "the output left a's channels-last order");
        let flex = |t: Tensor<W, 4>| Tensor::<Flex, 4>::from_data(t.into_data(), &Default::default());
        for (got, (w, part)) in [flex(y.inner()), flex(al.grad(&grads).unwrap()), flex(bf.grad(&grads).unwrap())].iter().zip(want.iter().zip(["output", "a grad", "b grad"])) {
            assert_eq!(got.to_data(), w.to_data(), "{shape:?} channels-last a: {part}");
        }
    }
    let half = |t: &Tensor<Flex, 4>| Tensor::<W, 4>::from_data(t.to_data(), &device).cast(FloatDType::F16);
    let got = sca_kernels::add_relu(half(&a), half(&b));
    let want = burn::tensor::activation::relu(half(&a) + half(&b));
    assert_eq!(got.dtype(), want.dtype());
    assert_eq!(got.into_data(), want.into_data(), "{shape:?} f16 forward");
}

/// A tensor used twice (a block's input: its first convolution and its shortcut) gets the
/// sum of both gradients, summed by our kernel (`register_summed!`): `relu(conv(x, w) + x)`
/// against Flex's autodiff of Burn's operations, with `x` channels-last in memory and not;
/// then the sum kernel alone on sizes of 240, 210 and 105 values (vectors of 4, 2 and 1),
/// its result in the first operand's memory order.
#[test]
fn gradients_of_a_tensor_used_twice_are_summed_in_its_memory_order() {
    use sca_kernels::layout::{has_layout, Layout};
    use sca_kernels::residual::ResidualKernels;
    let Some(device) = device() else { return };
    type A = Autodiff<W>;
    // Same size out as in: 8 channels to 8, 3×3, padding 1 (not in the plan: its default
    // refuses on lavapipe, then the fallback chain's `matmul` runs it).
    let case = Case { c: 8, o: 8, k: 3, s: 1, p: 1, d: 1, hw: [6, 5] };
    let [x, w, dy] = operands(&case, 900);
    let want = {
        type F = Autodiff<Flex>;
        let (xf, wf) = (Tensor::<F, 4>::from_data(x.to_data(), &Default::default()).require_grad(), Tensor::<F, 4>::from_data(w.to_data(), &Default::default()).require_grad());
        let y = burn::tensor::activation::relu(burn::tensor::module::conv2d(xf.clone(), wf.clone(), None, case.options()) + xf.clone());
        let grads = (y * Tensor::<F, 4>::from_data(dy.to_data(), &Default::default())).sum().backward();
        [xf.grad(&grads).unwrap(), wf.grad(&grads).unwrap()]
    };
    for last in [false, true] {
        let xa = match last {
            false => Tensor::<A, 4>::from_data(x.to_data(), &device),
            true => Tensor::<A, 4>::from_data(x.clone().permute([0, 2, 3, 1]).to_data(), &device).permute([0, 3, 1, 2]),
        }
        .require_grad();
        let wa = Tensor::<A, 4>::from_data(w.to_data(), &device).require_grad();
        let y = sca_kernels::add_relu(sca_kernels::gemm_conv2d(xa.clone(), wa.clone(), case.options()), xa.clone());
        let grads = (y * Tensor::<A, 4>::from_data(dy.to_data(), &device)).sum().backward();
        for (got, (want, what)) in [xa.grad(&grads).unwrap(), wa.grad(&grads).unwrap()].into_iter().zip(want.iter().zip(["x", "weight"])) {
            let e = rel_err(&Tensor::<Flex, 4>::from_data(got.into_data(), &Default::default()), want);
            assert!(e < 1e-5, "x channels-last {last}: {what} grad off by {e}");
        }
    }
    for (i, shape) in [[2, 4, 6, 5], [2, 3, 7, 5], [1, 3, 7, 5]].into_iter().enumerate() {
        let (a, b) = (random(shape, 910 + 2 * i as u64), random(shape, 911 + 2 * i as u64));
        let a_last: FloatTensor<W> = Tensor::<W, 4>::from_data(a.clone().permute([0, 2, 3, 1]).to_data(), &device).permute([0, 3, 1, 2]).into_primitive().tensor();
        for (b_last, what) in [(false, "b NCHW"), (true, "b channels-last")] {
            let b_t: FloatTensor<W> = match b_last {
                false => on_wgpu(&b, &device),
                true => Tensor::<W, 4>::from_data(b.clone().permute([0, 2, 3, 1]).to_data(), &device).permute([0, 3, 1, 2]).into_primitive().tensor(),
            };
            let sum = <W as ResidualKernels>::grad_sum(a_last.clone(), b_t);
            assert!(has_layout(&sum, Layout::ChannelsLast), "{shape:?}, {what}: the sum left a's channels-last order");
            assert_eq!(back(sum).into_data(), (a.clone() + b.clone()).into_data(), "{shape:?}, {what}");
        }
    }
}

#[test]
fn layout_copies_match_permutes() {
    use burn::tensor::TensorMetadata;
    use sca_kernels::layout::{to_channels_first, to_channels_last};
    let Some(device) = device() else { return };
    for (i, shape) in [[2, 3, 15, 13], [3, 40, 33, 1], [1, 64, 8, 8], [2, 70, 1, 1], [1, 5, 37, 35]].into_iter().enumerate() {
        for dtype in [FloatDType::F32, FloatDType::F16] {
            let x = Tensor::<W, 4>::from_data(random(shape, 400 + i as u64).to_data(), &device).cast(dtype);
            let want = x.clone().permute([0, 2, 3, 1]).into_data();
            let last = to_channels_last(x.clone().into_primitive().tensor());
            assert!(last.is_contiguous(), "{shape:?}: channels-last copy is contiguous");
            assert_eq!(last.shape().dims::<4>(), [shape[0], shape[2], shape[3], shape[1]]);
            let last = Tensor::<W, 4>::from_primitive(TensorPrimitive::Float(last));
            assert_eq!(last.clone().into_data(), want, "{shape:?} {dtype:?}: NCHW → NHWC");
            let first = to_channels_first(last.into_primitive().tensor());
            assert!(first.is_contiguous(), "{shape:?}: channels-first copy is contiguous");
            let first = Tensor::<W, 4>::from_primitive(TensorPrimitive::Float(first));
            assert_eq!(first.into_data(), x.clone().into_data(), "{shape:?} {dtype:?}: NHWC → NCHW");
        }
    }
    // A tensor whose memory already has the wanted layout comes back as a view of it.
    let memory = |t: &FloatTensor<W>| format!("{:?}", t.handle.memory);
    let x = Tensor::<W, 4>::from_data(random([2, 4, 5, 6], 410).to_data(), &device);
    let nchw_of_nhwc = x.clone().permute([0, 3, 1, 2]).into_primitive().tensor(); // [2, 6, 4, 5] over [2, 4, 5, 6]
    let last = to_channels_last(nchw_of_nhwc.clone());
    assert_eq!(memory(&last), memory(&nchw_of_nhwc), "NCHW view of NHWC memory: a copy was made");
    assert_eq!(last.shape().dims::<4>(), [2, 4, 5, 6]);
    let nhwc_of_nchw = x.permute([0, 2, 3, 1]).into_primitive().tensor(); // [2, 5, 6, 4] over [2, 4, 5, 6]
    let first = to_channels_first(nhwc_of_nchw.clone());
    assert_eq!(memory(&first), memory(&nhwc_of_nchw), "NHWC view of NCHW memory: a copy was made");
    assert_eq!(first.shape().dims::<4>(), [2, 4, 5, 6]);
}

/// The layout helpers that keep activations channels-last: which order a tensor's memory
/// has, copies into either (4-D and 3-D, one position, one channel), new tensors in either.
#[test]
fn tensors_move_between_channels_first_and_channels_last_memory() {
    use burn::tensor::TensorMetadata;
    use burn::tensor::ops::FloatTensorOps;
    use sca_kernels::layout::{empty_in, has_layout, into_layout, layout_of, Layout};
    let Some(device) = device() else { return };
    let memory = |t: &FloatTensor<W>| format!("{:?}", t.handle.memory);
    for (i, shape) in [vec![2, 5, 3, 4], vec![3, 7, 11], vec![2, 6, 1, 1], vec![2, 1, 3, 4]].into_iter().enumerate() {
        let values: Vec<f32> = (0..shape.iter().product::<usize>()).map(|v| (v * 7 % 23) as f32 + 0.1 * i as f32).collect();
        let x: FloatTensor<W> = Tensor::<W, 1>::from_floats(&values[..], &device).into_primitive().tensor();
        let x = W::float_reshape(x, shape.clone().into());
        // In logical order (a reshape to one dimension reads through the strides).
        let read = |t: FloatTensor<W>| Tensor::<W, 1>::from_primitive(TensorPrimitive::Float(W::float_reshape(t, [values.len()].into()))).into_data().to_vec::<f32>().unwrap();
        assert_eq!(layout_of(&x), Some(Layout::ChannelsFirst), "{shape:?}: a contiguous tensor");
        let last = into_layout(x.clone(), Layout::ChannelsLast);
        assert!(has_layout(&last, Layout::ChannelsLast), "{shape:?}: not channels-last after the copy");
        assert_eq!(last.shape(), shape.clone().into(), "{shape:?}: the shape changed");
        assert_eq!(read(last.clone()), values, "{shape:?}: values moved");
        // One channel or one position: both orders are the same memory, no copy.
        let trivial = shape[1] == 1 || shape[2..].iter().product::<usize>() == 1;
        assert_eq!(memory(&last) == memory(&x), trivial, "{shape:?}: copied iff the orders differ");
        let back = into_layout(last.clone(), Layout::ChannelsFirst);
        assert!(back.is_contiguous(), "{shape:?}: back to channels-first");
        assert_eq!(read(back), values, "{shape:?}: values moved on the way back");
        assert_eq!(memory(&into_layout(last.clone(), Layout::ChannelsLast)), memory(&last), "{shape:?}: already channels-last, yet copied");
        let empty = empty_in(Layout::ChannelsLast, &x, x.shape(), DType::F32);
        assert!(has_layout(&empty, Layout::ChannelsLast) && empty.shape() == x.shape(), "{shape:?}: empty_in");
    }
    // A transposed matrix's memory is neither order.
    let m: FloatTensor<W> = Tensor::<W, 3>::from_data(random([1, 2, 3, 4], 420).reshape([2, 3, 4]).to_data(), &device).swap_dims(0, 2).into_primitive().tensor();
    assert_eq!(layout_of(&m), None);
}

/// Training-mode batch norm on the CubeCL kernels against the same operation on Flex
/// (itself held to Burn's `BatchNorm` in sca-backbone's tests): output, updated running statistics and
/// the gradients of x, γ and β; channels of fewer values than a cube has units (3 × 12), of
/// more (2 × 300: several per unit, across images), and of enough to be split over cubes
/// (5 × 1,763: three unequal parts, merged; 4 × 2,304 read four values at a time, in three
/// parts), offset and scaled so that centring matters; with and without the ReLU inside the
/// operation. Each also with `x` channels-last in
/// memory (the channels-last kernels: a cube per 32 channels, here fewer, and 40 channels
/// over two cubes, the second part-filled, whose 3,720 values each are split over 30 cubes;
/// 4 × 2,304 in 72 parts, more than a merge cube's 64 units: several per unit, then merged
/// across the cube), where the output and the gradient of `x` must keep that memory order.
#[test]
fn batch_norm_kernels_match_the_tensor_operations() {
    use burn::tensor::TensorMetadata;
    use sca_kernels::batch_norm::{batch_norm_on, BatchNormKernels};
    use sca_kernels::layout::{has_layout, Layout};
    let Some(device) = device() else { return };
    // Channels-first, units read 4, 4, 1, 2 and 4 values at a time (the positions per channel
    // divided by the widest load); channels-last, the element-wise kernels' units 1, 1, 2, 4, 2.
    for (i, shape) in [[3, 5, 3, 4], [2, 3, 15, 20], [5, 2, 41, 43], [4, 40, 30, 31], [4, 2, 48, 48]].into_iter().enumerate() {
        let c = shape[1];
        let spread = Tensor::<Flex, 1>::from_floats(&(0..c).map(|j| [0.5f32, 2.0, 3.0, 0.7, 1.3][j % 5]).collect::<Vec<_>>()[..], &Default::default());
        let x = random(shape, 500 + i as u64) * spread.reshape([1, c, 1, 1]) + 2.0;
        let dy = random(shape, 510 + i as u64);
        let ramp = |a: f32, s: f32| (0..c).map(|j| a + s * j as f32).collect::<Vec<f32>>();
        let (gamma, beta) = (ramp(0.5, 0.25), ramp(-0.3, 0.1));
        /// The results, and the output's and x gradient's memory (`None` off CubeCL).
        #[allow(clippy::type_complexity)]
        fn run<T: BatchNormKernels>(x: &Tensor<Flex, 4>, dy: &Tensor<Flex, 4>, gamma: &[f32], beta: &[f32], relu: bool, last: bool, device: &T::Device) -> (Vec<Tensor<Flex, 1>>, [FloatTensor<T>; 2]) {
            let c = gamma.len();
            let ramp = |a: f32, s: f32| (0..c).map(|j| a + s * j as f32).collect::<Vec<f32>>();
            type B<T> = Autodiff<T>;
            let xa = match last {
                false => Tensor::<B<T>, 4>::from_data(x.to_data(), device),
                true => Tensor::<B<T>, 4>::from_data(x.clone().permute([0, 2, 3, 1]).to_data(), device).permute([0, 3, 1, 2]),
            }
            .require_grad();
            let g = Tensor::<B<T>, 1>::from_floats(gamma, device).require_grad();
            let b = Tensor::<B<T>, 1>::from_floats(beta, device).require_grad();
            // Running statistics away from their initial 0 and 1, so both terms of the update count.
            let running_mean = Tensor::<T, 1>::from_floats(&ramp(0.4, -0.2)[..], device);
            let running_var = Tensor::<T, 1>::from_floats(&ramp(1.5, 0.3)[..], device);
            let (y, mean, var) = batch_norm_on::<T>(xa.clone(), g.clone(), b.clone(), (running_mean, running_var), 1e-5, 0.1, relu);
            let grads = (y.clone() * Tensor::<B<T>, 4>::from_data(dy.to_data(), device)).sum().backward();
            let flat = |t: Tensor<T, 1>| Tensor::<Flex, 1>::from_data(t.into_data(), &Default::default());
            let n = y.shape().num_elements();
            let x_grad = xa.grad(&grads).unwrap();
            let memory = [y.clone().inner().into_primitive().tensor(), x_grad.clone().into_primitive().tensor()];
            let values = vec![
                flat(y.inner().reshape([n])),
                flat(mean),
                flat(var),
                flat(x_grad.reshape([n])),
                flat(g.grad(&grads).unwrap()),
                flat(b.grad(&grads).unwrap()),
            ];
            (values, memory)
        }
        for relu in [false, true] {
            let (want, _) = run::<Flex>(&x, &dy, &gamma, &beta, relu, false, &Default::default());
            let zeros = want[0].clone().equal_elem(0.0).int().sum().into_scalar();
            assert_eq!(zeros > 0, relu, "{shape:?}: the ReLU clamps outputs exactly when asked");
            for last in [false, true] {
                let (got, memory) = run::<W>(&x, &dy, &gamma, &beta, relu, last, &device);
                for ((g, w), what) in got.iter().zip(&want).zip(["output", "running mean", "running variance", "x grad", "gamma grad", "beta grad"]) {
                    let e = rel_err(g, w);
                    assert!(e < 1e-5, "{shape:?} relu={relu} channels-last={last} {what}: off by {e}");
                }
                let layout = if last { Layout::ChannelsLast } else { Layout::ChannelsFirst };
                for (t, what) in memory.iter().zip(["output", "x grad"]) {
                    assert!(has_layout(t, layout), "{shape:?} channels-last={last}: the {what} is not {layout:?} in memory (strides {:?})", t.meta.strides());
                    assert_eq!(t.shape().dims::<4>(), shape);
                }
            }
        }
    }
}

/// The batch statistics of channels whose mean is far larger than their spread (10⁵ times:
/// 1000 ± 0.01), against the same in f64: the moments kernel reads its input once, and sums
/// of squares about 0 would lose the variance entirely in f32 (`Σx²/n − mean²` is 10⁶ minus
/// 10⁶ for a variance of 10⁻⁴); about each channel's first value it keeps its digits.
/// Channels-first and channels-last, one cube per channel and channels split over cubes.
#[test]
fn batch_statistics_keep_their_digits_for_large_means() {
    use sca_kernels::batch_norm::batch_norm_on;
    let Some(device) = device() else { return };
    for (i, shape) in [[2, 3, 5, 7], [4, 3, 48, 48]].into_iter().enumerate() {
        let c = shape[1];
        let x = random(shape, 800 + i as u64) * 0.01 + 1000.0;
        // f64 reference from the same f32 values.
        let values: Vec<f32> = x.to_data().to_vec().unwrap();
        let per_channel = |ch: usize| -> Vec<f64> {
            let len = shape[2] * shape[3];
            (0..shape[0]).flat_map(|b| values[(b * c + ch) * len..(b * c + ch + 1) * len].iter().map(|&v| v as f64)).collect()
        };
        for last in [false, true] {
            let xa = match last {
                false => Tensor::<Autodiff<W>, 4>::from_data(x.to_data(), &device),
                true => Tensor::<Autodiff<W>, 4>::from_data(x.clone().permute([0, 2, 3, 1]).to_data(), &device).permute([0, 3, 1, 2]),
            }
            .require_grad();
            let ones = Tensor::<Autodiff<W>, 1>::ones([c], &device);
            let zeros = Tensor::<W, 1>::zeros([c], &device);
            // Momentum 1: the running statistics returned are the batch's own.
            let (_, mean, var) = batch_norm_on::<W>(xa, ones.clone(), ones.zeros_like(), (zeros.clone(), zeros), 1e-5, 1.0, false);
            let (mean, var): (Vec<f32>, Vec<f32>) = (mean.into_data().to_vec().unwrap(), var.into_data().to_vec().unwrap());
            for ch in 0..c {
                let v = per_channel(ch);
                let m = v.iter().sum::<f64>() / v.len() as f64;
                let s2 = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64;
                assert!(((mean[ch] as f64 - m) / m).abs() < 1e-6, "{shape:?} channels-last={last} channel {ch}: mean {} for {m}", mean[ch]);
                assert!(((var[ch] as f64 - s2) / s2).abs() < 1e-3, "{shape:?} channels-last={last} channel {ch}: variance {} for {s2}", var[ch]);
            }
        }
    }
}

/// Inference-mode batch norm in one kernel: `γ·(x − μ)/√(σ² + ε) + β` with the running
/// statistics, against the formula on Flex; channels-first and channels-last input (which it
/// keeps), with and without the ReLU; shapes whose units take one, two and four values.
#[test]
fn inference_batch_norm_is_one_kernel_in_either_memory_order() {
    let Some(device) = device() else { return };
    // Channels-first 35 and 24 positions per channel, channels-last 40 and 6 channels.
    for (i, shape) in [[3, 40, 5, 7], [2, 6, 4, 6]].into_iter().enumerate() {
        inference_batch_norm_matches_the_formula(shape, 700 + i as u64, &device);
    }
}

fn inference_batch_norm_matches_the_formula(shape: [usize; 4], seed: u64, device: &WgpuDevice) {
    use burn::tensor::TensorMetadata;
    use sca_kernels::layout::{has_layout, Layout};
    let device = device.clone();
    let c = shape[1];
    let x = random(shape, seed) * 2.0 + 0.5;
    let ramp = |a: f32, s: f32| (0..c).map(|j| a + s * j as f32).collect::<Vec<f32>>();
    let (gamma, beta, mean, var) = (ramp(0.5, 0.05), ramp(-0.3, 0.02), ramp(0.4, -0.03), ramp(0.8, 0.1));
    let eps = 1e-5;
    let flex = Default::default();
    let per_channel = |v: &[f32]| Tensor::<Flex, 1>::from_floats(v, &flex).reshape([1, c, 1, 1]);
    let normalised = (x.clone() - per_channel(&mean)) / (per_channel(&var) + eps as f32).sqrt() * per_channel(&gamma) + per_channel(&beta);
    for relu in [false, true] {
        let want = if relu { burn::tensor::activation::relu(normalised.clone()) } else { normalised.clone() };
        for last in [false, true] {
            let xw = match last {
                false => Tensor::<W, 4>::from_data(x.to_data(), &device),
                true => Tensor::<W, 4>::from_data(x.clone().permute([0, 2, 3, 1]).to_data(), &device).permute([0, 3, 1, 2]),
            };
            let v = |v: &[f32]| Tensor::<W, 1>::from_floats(v, &device);
            let y = sca_kernels::batch_norm_eval(xw, v(&gamma), v(&beta), v(&mean), v(&var), eps, relu).expect("wgpu runs the kernel");
            let layout = if last { Layout::ChannelsLast } else { Layout::ChannelsFirst };
            let memory = y.clone().into_primitive().tensor();
            assert!(has_layout(&memory, layout) && memory.shape().dims::<4>() == shape, "{shape:?} relu={relu} channels-last={last}: memory order lost");
            let got = Tensor::<Flex, 4>::from_data(y.into_data(), &flex);
            let e = rel_err(&got, &want);
            assert!(e < 1e-6, "{shape:?} relu={relu} channels-last={last}: off by {e}");
        }
    }
    // Off the CubeCL backends the caller gets its input back.
    let back = sca_kernels::batch_norm_eval(x.clone(), per_channel(&gamma).reshape([c]), per_channel(&beta).reshape([c]), per_channel(&mean).reshape([c]), per_channel(&var).reshape([c]), eps, false);
    assert!(back.is_err(), "Flex has no inference kernel");
}

/// With channels-last activations on, the `matmul` kernel takes channels-last inputs (and
/// output gradients) as rows of channels: 1 × 1 convolutions as they are, the others through
/// channels-last patches. The output and the data gradient come out channels-last, and every
/// pass gives Flex's answers on ResNet's kinds of convolution (the weight gradient also over
/// groups of rows, and from an output gradient that is not channels-last).
#[test]
fn convolutions_run_on_channels_last_rows() {
    use sca_kernels::as_matmul::{data_grad, forward, weight_grad};
    use sca_kernels::layout::{has_layout, into_layout, set_channels_last, Layout};
    let Some(device) = device() else { return };
    for (i, case) in PLANNED.iter().enumerate() {
        let [x, w, dy] = operands(case, 800 + 10 * i as u64);
        let want = reference(case, &x, &w, &dy);
        let last = |t: &Tensor<Flex, 4>| into_layout(on_wgpu(t, &device), Layout::ChannelsLast);
        let (xl, wl, dyl) = (last(&x), on_wgpu(&w, &device), last(&dy));
        let o = case.options();
        set_channels_last(true);
        let y = forward::<W>(xl.clone(), wl.clone(), &o).unwrap();
        let dx = (case.s == 1).then(|| data_grad::<W>(dyl.clone(), wl.clone(), &o).unwrap());
        let dws = [1, 2].map(|groups| weight_grad::<W>(xl.clone(), dyl.clone(), &w.shape(), &o, groups).unwrap());
        let dw_from_nchw = weight_grad::<W>(xl.clone(), on_wgpu(&dy, &device), &w.shape(), &o, 2).unwrap();
        set_channels_last(false);
        for (t, what) in [(Some(&y), "output"), (dx.as_ref(), "data gradient")] {
            if let Some(t) = t {
                assert!(has_layout(t, Layout::ChannelsLast), "{case:?}: the {what} is not channels-last (strides {:?})", t.meta.strides());
            }
        }
        let check = |got: FloatTensor<W>, want: &Tensor<Flex, 4>, what: &str| {
            let e = rel_err(&back(got), want);
            assert!(e < 1e-5, "{case:?} {what}: off by {e}");
        };
        check(y, &want[0], "output");
        if let Some(dx) = dx {
            check(dx, &want[1], "data gradient");
        }
        for (dw, what) in dws.into_iter().zip(["weight gradient", "weight gradient over 2 groups"]) {
            check(dw, &want[2], what);
        }
        check(dw_from_nchw, &want[2], "weight gradient from a channels-first output gradient");
    }
}

/// Zero channels for cubek's loads: `pad_channels_last` gives the input's values and zeros
/// after them, channels-last in memory, from channels-first and channels-last inputs; and
/// the stem's passes with them (on the `matmul` kernel, as lavapipe runs no cubek kernel)
/// give the unpadded convolution's output and weight gradient.
#[test]
fn padded_channels_change_no_convolution_result() {
    use burn::tensor::TensorMetadata;
    use sca_kernels::conv::{forward_padded_on, load_channels, weight_padded_on};
    use sca_kernels::layout::{has_layout, into_layout, pad_channels_last, Layout};
    assert_eq!([3, 4, 5, 64].map(load_channels), [4, 4, 8, 64]);
    let Some(device) = device() else { return };
    let x = random([2, 3, 5, 4], 900);
    for channels in [4, 8] {
        let zeros = Tensor::<Flex, 4>::zeros([2, channels - 3, 5, 4], &Default::default());
        let want = Tensor::cat(vec![x.clone(), zeros], 1);
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            let padded = pad_channels_last(into_layout(on_wgpu(&x, &device), layout), channels);
            assert!(has_layout(&padded, Layout::ChannelsLast), "{channels} channels from {layout:?}: not channels-last in memory");
            assert_eq!(padded.shape().dims::<4>(), [2, channels, 5, 4]);
            assert_eq!(back(padded).into_data(), want.to_data(), "{channels} channels from {layout:?}");
        }
    }
    let stem = PLANNED[4];
    assert_eq!(stem.c, 3, "the stem case");
    let [x, w, dy] = operands(&stem, 910);
    let want = reference(&stem, &x, &w, &dy);
    let o = stem.options();
    for channels in [4, 8] {
        let y = forward_padded_on(ConvKernel::Matmul, on_wgpu(&x, &device), on_wgpu(&w, &device), &o, channels).unwrap();
        let dw = weight_padded_on(ConvKernel::Matmul, on_wgpu(&x, &device), on_wgpu(&dy, &device), w.shape(), &o, channels).unwrap();
        assert!(dw.is_contiguous() && dw.shape().dims::<4>() == stem.w_shape(), "the weight gradient is the weight's shape, contiguous");
        for (got, want, what) in [(y, &want[0], "output"), (dw, &want[2], "weight gradient")] {
            let e = rel_err(&back(got), want);
            assert!(e < 1e-5, "stem padded to {channels} channels, {what}: off by {e}");
        }
    }
}
