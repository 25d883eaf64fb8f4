//! Convolution plans: kernel names, the shape key, lookups, the JSON form, choosing the
//! fastest from timings, and the bench entry point on the CPU backend.

use burn::backend::Flex;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Distribution, Shape, Tensor};
use sca_kernels::conv::{conv_kernel_names, conv_pass_on, conv_shape};
use sca_kernels::plan::{planned_kernel, use_plan, ConvKernel, ConvPlan, ConvShape, Pass, Timing};

fn stem() -> ConvShape {
    let options = ConvOptions::new([2, 2], [3, 3], [1, 1], 1);
    conv_shape(&Shape::new([128, 3, 224, 224]), &Shape::new([64, 3, 7, 7]), &options, DType::F32)
}

fn k(name: &str) -> ConvKernel {
    name.parse().unwrap()
}

#[test]
fn kernel_names_are_cubeks_and_parse_back() {
    let all = ConvKernel::all();
    assert_eq!(all.len(), 19);
    assert!(all.contains(&ConvKernel::Matmul) && ConvKernel::candidates().contains(&ConvKernel::Matmul));
    assert_eq!(k("matmul"), ConvKernel::Matmul);
    for kernel in &all {
        assert_eq!(&kernel.to_string().parse::<ConvKernel>().unwrap(), kernel);
    }
    assert_eq!(ConvKernel::DEFAULT.to_string(), "simple_sync_cyclic_cmma");
    // Without a plan, weight gradients go to the matmul (cubek's were 12x slower on an H200).
    assert_eq!(Pass::ALL.map(ConvKernel::built_in), [ConvKernel::DEFAULT, ConvKernel::DEFAULT, ConvKernel::Matmul]);
    assert_eq!(k("specialized_tma_mma").to_string(), "specialized_tma_mma");
    assert!(ConvKernel::candidates().iter().all(|c| all.contains(c)));
    let err = "simple_sync_cmma".parse::<ConvKernel>().unwrap_err();
    assert!(err.contains("'simple_sync_cmma'") && err.contains("simple_async_tma_cmma"), "{err}");
}

#[test]
fn the_shape_key_leaves_out_the_batch_and_computes_the_output() {
    let s = stem();
    assert_eq!(s.to_string(), "3x224x224 * 64x3x7x7 s2 p3 d1 f32");
    assert_eq!(s.output_size(), [112, 112]);
    // 112·112 positions × 64 outputs × 147 taps, per image.
    assert_eq!(s.macs(2), 2.0 * 112.0 * 112.0 * 64.0 * 147.0);
    let uneven = ConvShape { stride: [2, 1], padding: [1, 0], dtype: "bf16".into(), ..s };
    assert_eq!(uneven.to_string(), "3x224x224 * 64x3x7x7 s2,1 p1,0 d1 bf16");
    // (224 + 2 − 6 − 1) / 2 + 1 = 110 rows; (224 − 6 − 1) / 1 + 1 = 218 columns.
    assert_eq!(uneven.output_size(), [110, 218]);
    // Runs with channels-last activations have keys of their own.
    assert!(!s.channels_last, "layout::set_channels_last is off by default");
    let last = ConvShape { channels_last: true, ..stem() };
    assert_eq!(last.to_string(), "3x224x224 * 64x3x7x7 s2 p3 d1 f32 nhwc");
}

#[test]
fn each_memory_order_has_its_own_entries_and_borrows_the_others() {
    let nhwc = ConvShape { channels_last: true, ..stem() };
    let plan = ConvPlan::parse(
        r#"{"default": {"data": "simple_async_cyclic_cmma"},
            "shapes": {"3x224x224 * 64x3x7x7 s2 p3 d1 f32": {"forward": "matmul", "weight": "specialized_tma_cmma"},
                       "3x224x224 * 64x3x7x7 s2 p3 d1 f32 nhwc": {"forward": "simple_async_tma_cmma"}}}"#,
    )
    .unwrap();
    // Each order's own measurement where both have one.
    assert_eq!(plan.kernel(Pass::Forward, &stem()), ConvKernel::Matmul);
    assert_eq!(plan.kernel(Pass::Forward, &nhwc), k("simple_async_tma_cmma"));
    // The other order's before the default.
    assert_eq!(plan.kernel(Pass::Weight, &nhwc), k("specialized_tma_cmma"));
    assert_eq!(plan.kernel(Pass::Data, &nhwc), k("simple_async_cyclic_cmma"));
    let only_nhwc = ConvPlan::parse(r#"{"shapes": {"3x224x224 * 64x3x7x7 s2 p3 d1 f32 nhwc": {"weight": "matmul"}}}"#).unwrap();
    assert_eq!(only_nhwc.kernel(Pass::Weight, &stem()), ConvKernel::Matmul);
    assert_eq!(only_nhwc.kernel(Pass::Forward, &stem()), ConvKernel::DEFAULT);
    // Another element type is another shape.
    let bf16 = ConvShape { dtype: "bf16".into(), ..nhwc };
    assert_eq!(plan.kernel(Pass::Forward, &bf16), ConvKernel::DEFAULT);
}

#[test]
fn lookups_go_shape_then_default_then_the_built_in_kernels() {
    let plan = ConvPlan::parse(
        r#"{"device": "test", "batch": 128,
            "default": {"forward": "simple_async_cyclic_cmma"},
            "shapes": {"3x224x224 * 64x3x7x7 s2 p3 d1 f32": {"weight": "specialized_tma_cmma"}}}"#,
    )
    .unwrap();
    let other = ConvShape { dtype: "bf16".into(), ..stem() };
    assert_eq!(plan.kernel(Pass::Weight, &stem()), k("specialized_tma_cmma"));
    assert_eq!(plan.kernel(Pass::Weight, &other), ConvKernel::Matmul);
    assert_eq!(plan.kernel(Pass::Forward, &stem()), k("simple_async_cyclic_cmma"));
    assert_eq!(plan.kernel(Pass::Data, &stem()), ConvKernel::DEFAULT);

    // The process-wide plan: none means the built-in kernels.
    assert_eq!(planned_kernel(Pass::Weight, &stem()), ConvKernel::Matmul);
    assert_eq!(planned_kernel(Pass::Data, &stem()), ConvKernel::DEFAULT);
    use_plan(plan.clone());
    assert_eq!(planned_kernel(Pass::Weight, &stem()), k("specialized_tma_cmma"));
    use_plan(ConvPlan::default());
    assert_eq!(planned_kernel(Pass::Weight, &stem()), ConvKernel::Matmul);

    // Written and read back unchanged.
    let text = serde_json::to_string_pretty(&plan).unwrap();
    assert_eq!(ConvPlan::parse(&text).unwrap(), plan);
}

/// The plan shipped for the H200 reads, names all 23 ResNet-50 shapes at 224 px in
/// channels-last order, and keeps weight gradients mostly on `matmul`, as measured.
#[test]
fn the_shipped_h200_plan_reads() {
    let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/conv-plans/h200-f32.json"));
    let plan = ConvPlan::load(path).unwrap();
    assert!(plan.device.contains("H200") && plan.batch == 128, "{plan:?}");
    assert_eq!(plan.shapes.len(), 23);
    assert!(plan.shapes.keys().all(|k| k.ends_with(" f32 nhwc")), "{:?}", plan.shapes.keys());
    assert_eq!(plan.default.get(&Pass::Weight), Some(&ConvKernel::Matmul));
    let stem = ConvShape { channels_last: true, ..stem() };
    assert!(plan.shapes.contains_key(&stem.to_string()), "the stem's key: {stem}");
    let on_matmul = plan.shapes.values().filter(|k| k.get(&Pass::Weight) == Some(&ConvKernel::Matmul)).count();
    assert!(on_matmul >= 18, "{on_matmul} of 23 weight passes on matmul");
}

#[test]
fn bad_plans_name_what_is_wrong() {
    let err = ConvPlan::parse(r#"{"default": {"forward": "fastest_cmma"}}"#).unwrap_err();
    assert!(err.contains("'fastest_cmma'"), "{err}");
    let err = ConvPlan::parse(r#"{"default": {"backward": "simple_sync_cyclic_cmma"}}"#).unwrap_err();
    assert!(err.contains("backward"), "{err}");
    let err = ConvPlan::parse(r#"{"shape": {}}"#).unwrap_err();
    assert!(err.contains("shape"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("plan.json");
    let err = ConvPlan::load(&missing).unwrap_err();
    assert!(err.contains("plan.json"), "{err}");
    std::fs::write(&missing, "{\"batch\": ").unwrap();
    let err = ConvPlan::load(&missing).unwrap_err();
    assert!(err.contains("plan.json") && err.contains("EOF"), "{err}");
}

#[test]
fn the_fastest_plan_takes_each_shapes_best_and_a_default_fair_to_refusals() {
    let (a, b, c) = (k("simple_sync_cyclic_cmma"), k("simple_async_tma_cmma"), k("specialized_tma_cmma"));
    let t = |shape: &str, pass, kernel, ms| Timing { shape: shape.into(), pass, kernel, ms };
    let timings = vec![
        // Shape "big": b fastest; c refused it (no timing).
        t("big", Pass::Forward, a, 10.0),
        t("big", Pass::Forward, b, 6.0),
        // Shape "small": c fastest, b slowest.
        t("small", Pass::Forward, a, 1.0),
        t("small", Pass::Forward, b, 1.5),
        t("small", Pass::Forward, c, 0.5),
        t("small", Pass::Weight, a, 2.0),
    ];
    let plan = ConvPlan::fastest(&timings, "card", 64);
    assert_eq!((plan.device.as_str(), plan.batch), ("card", 64));
    assert_eq!(plan.shapes["big"][&Pass::Forward], b);
    assert_eq!(plan.shapes["small"][&Pass::Forward], c);
    assert_eq!(plan.shapes["small"][&Pass::Weight], a);
    assert!(!plan.shapes["big"].contains_key(&Pass::Weight));
    // c refused "big", so the default is a or b, the kernels that took both shapes: b
    // (6 + 1.5) beats a (10 + 1), though c was fastest where it ran.
    assert_eq!(plan.default[&Pass::Forward], b);
    assert_eq!(plan.default[&Pass::Weight], a);
    assert!(!plan.default.contains_key(&Pass::Data));

    // Laid over an older plan: re-measured entries replace, the rest stay.
    let older = ConvPlan::parse(
        r#"{"device": "old", "default": {"data": "simple_sync_strided_mma"},
            "shapes": {"small": {"weight": "simple_async_tma_mma", "data": "simple_async_tma_mma"}, "f32 only": {"forward": "simple_async_tma_mma"}}}"#,
    )
    .unwrap();
    let merged = plan.clone().over(older);
    assert_eq!((merged.device.as_str(), &merged.default), ("card", &plan.default));
    assert_eq!(merged.shapes["small"][&Pass::Weight], a);
    assert_eq!(merged.shapes["small"][&Pass::Data], k("simple_async_tma_mma"));
    assert_eq!(merged.shapes["f32 only"][&Pass::Forward], k("simple_async_tma_mma"));
    assert_eq!(merged.shapes["big"], plan.shapes["big"]);
}

/// `conv_pass_on(kernel)` for all three passes of `conv(x, w)` with a random output gradient.
fn passes(kernel: &str, x: &Tensor<Flex, 4>, w: &Tensor<Flex, 4>, dy: &Tensor<Flex, 4>, options: &ConvOptions<2>) -> Vec<Tensor<Flex, 4>> {
    Pass::ALL.iter().map(|&p| conv_pass_on(kernel, p, x.clone(), w.clone(), dy.clone(), options.clone()).unwrap_or_else(|e| panic!("{kernel} {p}: {e}"))).collect()
}

#[test]
fn the_matmul_kernel_computes_every_convolution_and_both_gradients() {
    use burn::tensor::ops::FloatTensor;
    use sca_kernels::as_matmul;
    let device = Default::default();
    // (input [N, C, H, W], weight [O, C, kh, kw], stride, padding, dilation): 1×1 as it is,
    // a strided 1×1 shortcut, 3×3 padded with stride 1 and 2, the 7×7 stem, dilation, odd sides.
    let cases = [
        ([6, 5, 4, 3], [7, 5, 1, 1], 1, 0, 1),
        ([4, 5, 7, 6], [8, 5, 1, 1], 2, 0, 1),
        ([4, 3, 9, 8], [6, 3, 3, 3], 1, 1, 1),
        ([4, 3, 9, 8], [6, 3, 3, 3], 2, 1, 1),
        ([2, 3, 15, 13], [8, 3, 7, 7], 2, 3, 1),
        ([2, 4, 11, 10], [5, 4, 3, 3], 1, 2, 2),
        ([2, 4, 11, 10], [5, 4, 3, 3], 3, 1, 1),
    ];
    for (xs, ws, s, p, d) in cases {
        let options = ConvOptions::new([s, s], [p, p], [d, d], 1);
        let x = Tensor::<Flex, 4>::random(xs, Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<Flex, 4>::random(ws, Distribution::Normal(0.0, 1.0), &device);
        let y = burn::tensor::module::conv2d(x.clone(), w.clone(), None, options.clone());
        let dy = Tensor::<Flex, 4>::random(y.dims(), Distribution::Normal(0.0, 1.0), &device);
        let want = passes("flex", &x, &w, &dy, &options);
        for (pass, (got, want)) in Pass::ALL.iter().zip(passes("matmul", &x, &w, &dy, &options).into_iter().zip(&want)) {
            assert_eq!(got.dims(), want.dims(), "{pass} {xs:?} {ws:?} s{s} p{p} d{d}");
            got.into_data().assert_approx_eq::<f32>(&want.clone().into_data(), burn::tensor::Tolerance::absolute(1e-3));
        }
    }

    // One entry by hand for a 1×1: y[1, 3, 2, 0] = Σ_c w[3, c]·x[1, c, 2, 0], and
    // dW[3][2] = Σ_n Σ_pixels dY[n][3]·X[n][2].
    let (n, c, o, h, w) = (6, 5, 7, 4, 3);
    let options = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
    let x = Tensor::<Flex, 4>::random([n, c, h, w], Distribution::Normal(0.0, 1.0), &device);
    let wt = Tensor::<Flex, 4>::random([o, c, 1, 1], Distribution::Normal(0.0, 1.0), &device);
    let dy = Tensor::<Flex, 4>::random([n, o, h, w], Distribution::Normal(0.0, 1.0), &device);
    let [y, _, dw] = <[Tensor<Flex, 4>; 3]>::try_from(passes("matmul", &x, &wt, &dy, &options)).unwrap();
    let (xs, ws): (Vec<f32>, Vec<f32>) = (x.clone().into_data().to_vec().unwrap(), wt.clone().into_data().to_vec().unwrap());
    let image = 1;
    let y_hand: f32 = (0..c).map(|ci| ws[3 * c + ci] * xs[((image * c + ci) * h + 2) * w]).sum();
    let y_got: Vec<f32> = y.into_data().to_vec().unwrap();
    assert!((y_hand - y_got[((image * o + 3) * h + 2) * w]).abs() < 1e-4);
    let dw_hand: f32 = (x.clone().narrow(1, 2, 1) * dy.clone().narrow(1, 3, 1)).sum().into_scalar();
    let dw_got: Vec<f32> = dw.clone().into_data().to_vec().unwrap();
    assert!((dw_hand - dw_got[3 * c + 2]).abs() < 1e-4);

    // Every grouping of the weight gradient gives the same sum; groups must divide the batch.
    let prim = |t: &Tensor<Flex, 4>| -> FloatTensor<Flex> { t.clone().into_primitive().tensor() };
    let w3 = Tensor::<Flex, 4>::random([7, c, 3, 3], Distribution::Normal(0.0, 1.0), &device);
    let pad1 = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let dy3 = Tensor::<Flex, 4>::random([n, 7, h, w], Distribution::Normal(0.0, 1.0), &device);
    let want = passes("flex", &x, &w3, &dy3, &pad1).remove(2);
    for groups in [1, 2, 3, 6] {
        let got = as_matmul::weight_grad::<Flex>(prim(&x), prim(&dy3), &w3.shape(), &pad1, groups).unwrap();
        Tensor::<Flex, 4>::from_primitive(burn::tensor::TensorPrimitive::Float(got))
            .into_data()
            .assert_approx_eq::<f32>(&want.clone().into_data(), burn::tensor::Tolerance::absolute(1e-3));
    }
    let err = as_matmul::weight_grad::<Flex>(prim(&x), prim(&dy), &dw.shape(), &options, 4).unwrap_err();
    assert!(err.contains("4 groups do not divide a batch of 6"), "{err}");

    // In bf16 (the padding's zeros take the input's type): within bf16's rounding of f32.
    let (x, w) = (Tensor::<Flex, 4>::random([2, 3, 9, 8], Distribution::Normal(0.0, 1.0), &device), Tensor::<Flex, 4>::random([6, 3, 3, 3], Distribution::Normal(0.0, 0.3), &device));
    let strided = ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
    let y32 = burn::tensor::module::conv2d(x.clone(), w.clone(), None, strided.clone());
    let bf = |t: &Tensor<Flex, 4>| t.clone().cast(burn::tensor::FloatDType::BF16);
    let y16 = conv_pass_on("matmul", Pass::Forward, bf(&x), bf(&w), bf(&y32), strided).unwrap();
    assert_eq!(y16.dtype(), DType::BF16);
    y16.cast(burn::tensor::FloatDType::F32).into_data().assert_approx_eq::<f32>(&y32.into_data(), burn::tensor::Tolerance::absolute(0.1));

    // Groups: the fewest giving two 64×64 tiles per SM, within 2^25 partial products.
    use as_matmul::weight_grad_groups;
    assert_eq!(weight_grad_groups(128, 64, 64, 132), 128); // 1 tile: as many groups as images
    assert_eq!(weight_grad_groups(128, 256, 64, 132), 128); // 4 tiles: 66 needed, 128 the first divisor past it
    assert_eq!(weight_grad_groups(128, 512, 256, 132), 16); // 32 tiles: 9 needed → 16
    assert_eq!(weight_grad_groups(128, 2048, 1024, 132), 1); // 512 tiles: enough already
    assert_eq!(weight_grad_groups(128, 1024, 1024, 100_000), 32); // none enough: memory caps at 2^25 / 2^20
    assert_eq!(weight_grad_groups(6, 64, 64, 132), 6);
}

#[test]
fn the_bench_entry_runs_the_cpu_backends_own_kernels_and_refuses_others() {
    assert_eq!(conv_kernel_names::<Flex>(true), vec!["flex".to_string(), "matmul".to_string()]);
    let device = Default::default();
    let x = Tensor::<Flex, 4>::random([2, 3, 9, 9], Distribution::Normal(0.0, 1.0), &device);
    let w = Tensor::<Flex, 4>::random([4, 3, 3, 3], Distribution::Normal(0.0, 1.0), &device);
    let options = ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
    let y = burn::tensor::module::conv2d(x.clone(), w.clone(), None, options.clone());
    let dy = Tensor::<Flex, 4>::random(y.dims(), Distribution::Normal(0.0, 1.0), &device);
    let run = |pass| conv_pass_on("flex", pass, x.clone(), w.clone(), dy.clone(), options.clone()).unwrap();
    let close = |a: Tensor<Flex, 4>, b: Tensor<Flex, 4>| a.into_data().assert_approx_eq::<f32>(&b.into_data(), burn::tensor::Tolerance::absolute(1e-4));
    close(run(Pass::Forward), y.clone());
    // The gradients of Σ y·dy: the data gradient as the input's, the weight gradient as the weight's.
    type A = burn::backend::Autodiff<Flex>;
    let (xa, wa) = (Tensor::<A, 4>::from_inner(x.clone()).require_grad(), Tensor::<A, 4>::from_inner(w.clone()).require_grad());
    let loss = (burn::tensor::module::conv2d(xa.clone(), wa.clone(), None, options.clone()) * Tensor::<A, 4>::from_inner(dy.clone())).sum();
    let grads = loss.backward();
    close(run(Pass::Data), xa.grad(&grads).unwrap());
    close(run(Pass::Weight), wa.grad(&grads).unwrap());
    let err = conv_pass_on("simple_sync_cyclic_cmma", Pass::Forward, x, w, dy, options).unwrap_err();
    assert!(err.contains("'simple_sync_cyclic_cmma'") && err.contains("flex"), "{err}");
}
