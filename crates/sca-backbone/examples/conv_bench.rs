//! Convolution speed on the CPU backend: Burn's `conv2d` against the matmul path, per conv
//! shape and per ResNet training step (forward + backward), plus a per-op-class profile.
//!
//! `cargo run --release -p sca-backbone --example conv_bench [SECTION]... [--system-malloc]`
//!
//! Sections: `shapes`, `steps`, `inference`, `profile` (all four when none is named), and the
//! diagnostics behind the design, run only when named: `layout` (1×1 layout crossover),
//! `parts` (where an im2col conv's time goes), `bnparts` (same for batch norm), `gemm` (GEMM
//! orientation). Timings are the best of interleaved runs (see [`compare`]).

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Distribution, Tensor};
use sca_backbone::conv::{conv_forward, conv_matmul_with_layout, Layout};

use sca_backbone::{Arch, ConvImpl, ResNet, ResNetConfig};

type B = Autodiff<Flex>;

/// Best seconds of each closure, run round-robin (one warm-up each) for at least `rounds`
/// rounds and `min_s` seconds. Interleaving and the minimum keep the comparison fair on a
/// machine where other processes come and go: they only ever add time.
fn compare(fs: &mut [&mut dyn FnMut()], rounds: usize, min_s: f64) -> Vec<f64> {
    fs.iter_mut().for_each(|f| f());
    let mut best = vec![f64::MAX; fs.len()];
    let start = Instant::now();
    let mut r = 0;
    while r < rounds || start.elapsed().as_secs_f64() < min_s {
        for (f, b) in fs.iter_mut().zip(best.iter_mut()) {
            let t = Instant::now();
            f();
            *b = b.min(t.elapsed().as_secs_f64());
        }
        r += 1;
    }
    best
}

fn dev() -> burn::tensor::Device<B> {
    Default::default()
}

fn rand4(dims: [usize; 4]) -> Tensor<B, 4> {
    Tensor::random(dims, Distribution::Normal(0.0, 1.0), &dev())
}

fn conv_cfg(cin: usize, cout: usize, k: usize, s: usize, p: usize) -> Conv2dConfig {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([s, s])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(false)
}

fn out_side(conv: &Conv2d<B>, side: usize) -> usize {
    let p = match conv.padding {
        PaddingConfig2d::Explicit(p, ..) => p,
        _ => 0,
    };
    (side + 2 * p - conv.kernel_size[0]) / conv.stride[0] + 1
}

/// 2·MACs of one forward.
fn conv_flops(conv: &Conv2d<B>, dims: [usize; 4]) -> f64 {
    let [o, c, kh, kw] = conv.weight.dims();
    let oh = out_side(conv, dims[2]);
    let ow = out_side(conv, dims[3]);
    2.0 * (dims[0] * o * c * kh * kw * oh * ow) as f64
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Native,
    Batched,
    Rows,
    Auto,
}

fn run_conv(conv: &Conv2d<B>, x: Tensor<B, 4>, path: Path) -> Tensor<B, 4> {
    match path {
        Path::Native => conv_forward(conv, x, ConvImpl::Native),
        Path::Batched => conv_matmul_with_layout(conv, x, Layout::Batched),
        Path::Rows => conv_matmul_with_layout(conv, x, Layout::Rows),
        Path::Auto => conv_forward(conv, x, ConvImpl::Matmul),
    }
}

/// One forward + backward; the input gradient only where a network would need it.
fn conv_step(conv: &Conv2d<B>, x: &Tensor<B, 4>, x_grad: bool, path: Path) {
    let x = x.clone().set_require_grad(x_grad);
    let grads = run_conv(conv, x, path).sum().backward();
    let gw = conv.weight.val().grad(&grads).expect("weight grad");
    std::hint::black_box(gw);
}

fn section_shapes() {
    println!("\n## (a) one convolution, forward + backward (ms; GFLOP/s counts fwd + dx + dW, dx skipped for 3-channel stems)");
    println!("| conv | input [B,C,H,W] | native | matmul, rows layout | matmul, batched layout | matmul (default pick) | speed-up |");
    println!("|---|---|---|---|---|---|---|");
    // (cin, cout, k, stride, pad, batch, side): the shape classes of ResNet-18/50 at 32-64 px.
    let cases: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
        (3, 64, 7, 2, 3, 32, 64),
        (3, 64, 3, 1, 1, 32, 32),
        (64, 64, 3, 1, 1, 32, 32),
        (64, 64, 3, 1, 1, 32, 16),
        (64, 128, 3, 2, 1, 32, 32),
        (128, 128, 3, 1, 1, 32, 16),
        (128, 128, 3, 1, 1, 32, 8),
        (256, 256, 3, 1, 1, 32, 8),
        (256, 256, 3, 1, 1, 32, 4),
        (512, 512, 3, 1, 1, 32, 4),
        (512, 512, 3, 1, 1, 32, 2),
        (64, 128, 1, 2, 0, 32, 32),
        (256, 512, 1, 2, 0, 32, 8),
        (256, 64, 1, 1, 0, 16, 16),
        (64, 256, 1, 1, 0, 16, 16),
        (1024, 256, 1, 1, 0, 16, 4),
        (512, 2048, 1, 1, 0, 16, 2),
    ];
    for &(cin, cout, k, s, p, b, side) in cases {
        let conv: Conv2d<B> = conv_cfg(cin, cout, k, s, p).init(&dev());
        let dims = [b, cin, side, side];
        let x_grad = cin != 3;
        let flops = conv_flops(&conv, dims) * if x_grad { 3.0 } else { 2.0 };
        let pointwise = k == 1 && s == 1;
        let x = rand4(dims);
        let paths: Vec<Path> = [Path::Native, Path::Rows, Path::Batched, Path::Auto]
            .into_iter()
            .filter(|&p| p != Path::Batched || pointwise)
            .collect();
        let (conv, x) = (&conv, &x);
        let mut fs: Vec<Box<dyn FnMut()>> =
            paths.iter().map(|&p| Box::new(move || conv_step(conv, x, x_grad, p)) as Box<dyn FnMut()>).collect();
        let mut refs: Vec<&mut dyn FnMut()> = fs.iter_mut().map(|f| f.as_mut() as &mut dyn FnMut()).collect();
        let best = compare(&mut refs, 3, 1.0);
        let t: Vec<Option<f64>> = [Path::Native, Path::Rows, Path::Batched, Path::Auto]
            .iter()
            .map(|p| paths.iter().position(|q| q == p).map(|i| best[i]))
            .collect();
        let cell = |t: Option<f64>| match t {
            Some(s) => format!("{:.1} ms ({:.0})", s * 1e3, flops / s / 1e9),
            None => "–".into(),
        };
        println!(
            "| {k}×{k}/{s} {cin}→{cout} | [{b},{cin},{side},{side}] | {} | {} | {} | {} | {:.2}× |",
            cell(t[0]),
            cell(t[1]),
            cell(t[2]),
            cell(t[3]),
            t[0].unwrap() / t[3].unwrap()
        );
    }
}

fn model(arch: Arch, small: bool, imp: ConvImpl) -> ResNet<B> {
    ResNetConfig::new(arch).with_small_stem(small).with_conv_impl(imp).init(&dev())
}

/// A training step without the optimiser: forward, loss, backward, all parameter grads.
fn train_step(m: &ResNet<B>, x: Tensor<B, 4>) {
    finish_step(m, m.forward_features(x));
}

fn finish_step(m: &ResNet<B>, f: Tensor<B, 2>) {
    let grads = f.powi_scalar(2).mean().backward();
    std::hint::black_box(m.conv1.weight.val().grad(&grads).expect("stem grad"));
}

/// The same step through Burn's own modules only (`Conv2d::forward`, `BatchNorm::forward`):
/// the baseline before this crate's fast paths.
fn stock_train_step(m: &ResNet<B>, x: Tensor<B, 4>) {
    let mut x = relu(m.bn1.forward(m.conv1.forward(x)));
    if let Some(pool) = &m.maxpool {
        x = pool.forward(x);
    }
    for blk in m.layer1.iter().chain(&m.layer2).chain(&m.layer3).chain(&m.layer4) {
        let identity = match &blk.downsample {
            Some(d) => d.bn.forward(d.conv.forward(x.clone())),
            None => x.clone(),
        };
        let mut out = blk.bn2.forward(blk.conv2.forward(relu(blk.bn1.forward(blk.conv1.forward(x)))));
        if let (Some(c3), Some(b3)) = (&blk.conv3, &blk.bn3) {
            out = b3.forward(c3.forward(relu(out)));
        }
        x = relu(out + identity);
    }
    finish_step(m, sca_backbone::resnet::global_avg_pool(x));
}

/// One op the network runs, with its input dims: the trace behind FLOP counts and the profile.
enum Op<'a> {
    Conv(&'a Conv2d<B>, [usize; 4], bool),
    Bn(&'a BatchNorm<B>, [usize; 4]),
    /// Burn's `BatchNorm::forward`, for comparison in the profile.
    BurnBn(&'a BatchNorm<B>, [usize; 4]),
    Relu([usize; 4]),
    Add([usize; 4]),
    MaxPool([usize; 4]),
    Pool([usize; 4]),
}

fn trace(m: &ResNet<B>, dims: [usize; 4]) -> Vec<Op<'_>> {
    let mut ops = Vec::new();
    let [b, _, side, _] = dims;
    let mut d = dims;
    let conv_out = |c: &Conv2d<B>, d: [usize; 4]| [b, c.weight.dims()[0], out_side(c, d[2]), out_side(c, d[3])];
    ops.push(Op::Conv(&m.conv1, d, false));
    d = conv_out(&m.conv1, d);
    ops.push(Op::Bn(&m.bn1, d));
    ops.push(Op::Relu(d));
    if m.maxpool.is_some() {
        ops.push(Op::MaxPool(d));
        d = [b, d[1], d[2].div_ceil(2), d[3].div_ceil(2)];
    }
    let _ = side;
    for blk in m.layer1.iter().chain(&m.layer2).chain(&m.layer3).chain(&m.layer4) {
        let input = d;
        let mut convs = vec![(&blk.conv1, &blk.bn1), (&blk.conv2, &blk.bn2)];
        if let (Some(c3), Some(b3)) = (&blk.conv3, &blk.bn3) {
            convs.push((c3, b3));
        }
        let n = convs.len();
        for (i, (c, bn)) in convs.into_iter().enumerate() {
            ops.push(Op::Conv(c, d, true));
            d = conv_out(c, d);
            ops.push(Op::Bn(bn, d));
            if i + 1 < n {
                ops.push(Op::Relu(d));
            }
        }
        if let Some(ds) = &blk.downsample {
            ops.push(Op::Conv(&ds.conv, input, true));
            ops.push(Op::Bn(&ds.bn, d));
        }
        ops.push(Op::Add(d));
        ops.push(Op::Relu(d));
    }
    ops.push(Op::Pool(d));
    ops
}

/// FLOPs of one training step (forward, dx except for the stem, dW) over all convolutions.
fn step_flops(m: &ResNet<B>, dims: [usize; 4]) -> f64 {
    trace(m, dims)
        .iter()
        .map(|op| match op {
            Op::Conv(c, d, xg) => conv_flops(c, *d) * if *xg { 3.0 } else { 2.0 },
            _ => 0.0,
        })
        .sum()
}

const STEPS: [(Arch, bool, usize, usize); 3] =
    [(Arch::ResNet18, false, 64, 32), (Arch::ResNet18, true, 32, 32), (Arch::ResNet50, false, 64, 16)];

fn section_steps() {
    println!("\n## (b) ResNet training step (forward + backward, no optimiser), images/s (conv GFLOP/s)");
    println!("| model | input | Burn modules (conv2d + BatchNorm) | native conv + fast BN | matmul conv + fast BN (default) | speed-up vs Burn |");
    println!("|---|---|---|---|---|---|");
    for (arch, small, side, b) in STEPS {
        let dims = [b, 3, side, side];
        let x = rand4(dims);
        let native = model(arch, small, ConvImpl::Native);
        // Same parameters: initialise, then switch the impl on a copy.
        let _ = native.forward_features(x.clone());
        let matmul = native.clone().with_conv_impl(ConvImpl::Matmul);
        let flops = step_flops(&native, dims);
        let best = compare(
            &mut [
                &mut || stock_train_step(&native, x.clone()),
                &mut || train_step(&native, x.clone()),
                &mut || train_step(&matmul, x.clone()),
            ],
            3,
            4.0,
        );
        let row: Vec<(f64, f64)> = best.iter().map(|&s| (b as f64 / s, flops / s / 1e9)).collect();
        let stem = if small { "small stem" } else { "standard stem" };
        let cell = |(ips, gf): (f64, f64)| format!("{ips:.1} img/s ({gf:.0})");
        println!(
            "| {arch} {stem} | {b}×3×{side}×{side} | {} | {} | {} | {:.2}× |",
            cell(row[0]),
            cell(row[1]),
            cell(row[2]),
            row[2].0 / row[0].0
        );
    }
}

/// Forward only, without autodiff (feature extraction, evaluation).
fn section_inference() {
    type F = Flex;
    println!("\n## (d) forward only, no autodiff (inference-mode BN), images/s");
    println!("| model | input | native | matmul | speed-up |");
    println!("|---|---|---|---|---|");
    for (arch, small, side, b) in STEPS.into_iter().chain([(Arch::ResNet50, false, 224, 8)]) {
        let d = Default::default();
        let x = Tensor::<F, 4>::random([b, 3, side, side], Distribution::Normal(0.0, 1.0), &d);
        let native: ResNet<F> = ResNetConfig::new(arch).with_small_stem(small).with_conv_impl(ConvImpl::Native).init(&d);
        let _ = native.forward_features(x.clone());
        let matmul = native.clone().with_conv_impl(ConvImpl::Matmul);
        let t = compare(
            &mut [&mut || drop(native.forward_features(x.clone())), &mut || drop(matmul.forward_features(x.clone()))],
            3,
            2.0,
        );
        let stem = if small { "small stem" } else { "standard stem" };
        println!(
            "| {arch} {stem} | {b}×3×{side}×{side} | {:.1} | {:.1} | {:.2}× |",
            b as f64 / t[0],
            b as f64 / t[1],
            t[0] / t[1]
        );
    }
}

/// Forward + backward of one op in isolation, minus the cost of `sum().backward()` on its
/// output alone (best of interleaved runs).
fn op_time(op: &Op, imp: ConvImpl) -> f64 {
    let measure = |d: [usize; 4], out: [usize; 4], x_grad: bool, f: &dyn Fn(Tensor<B, 4>) -> Tensor<B, 4>| {
        let (x, y) = (rand4(d), rand4(out));
        let t = compare(
            &mut [
                &mut || drop(std::hint::black_box(f(x.clone().set_require_grad(x_grad)).sum().backward())),
                &mut || drop(std::hint::black_box(y.clone().require_grad().sum().backward())),
            ],
            3,
            0.0,
        );
        (t[0] - t[1]).max(0.0)
    };
    match op {
        Op::Conv(c, d, xg) => {
            let out = [d[0], c.weight.dims()[0], out_side(c, d[2]), out_side(c, d[3])];
            measure(*d, out, *xg, &|x| conv_forward(c, x, imp))
        }
        Op::Bn(bn, d) => measure(*d, *d, true, &|x| sca_backbone::norm::batch_norm_forward(bn, x)),
        Op::BurnBn(bn, d) => measure(*d, *d, true, &|x| bn.forward(x)),
        Op::Relu(d) => measure(*d, *d, true, &relu),
        Op::Add(d) => {
            let y = rand4(*d).require_grad();
            measure(*d, *d, true, &|x| x + y.clone())
        }
        Op::MaxPool(d) => {
            let out = [d[0], d[1], d[2].div_ceil(2), d[3].div_ceil(2)];
            measure(*d, out, true, &|x| burn::tensor::module::max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], false))
        }
        Op::Pool(d) => {
            let pooled = |x: Tensor<B, 4>| {
                let [b, c, _, _] = x.dims();
                sca_backbone::resnet::global_avg_pool(x).reshape([b, c, 1, 1])
            };
            measure(*d, [d[0], d[1], 1, 1], true, &pooled)
        }
    }
}

fn section_profile() {
    println!("\n## (c) profile: each op of the step run alone (fwd + bwd, summed per class), matmul convs");
    println!("| model | input | step | conv | batch norm | relu | residual add | max-pool + avg-pool | (Burn's BatchNorm instead) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (arch, small, side, b) in STEPS {
        let dims = [b, 3, side, side];
        let m = model(arch, small, ConvImpl::Matmul);
        let x = rand4(dims);
        let step = compare(&mut [&mut || train_step(&m, x.clone())], 3, 0.0)[0];
        let mut sums = [0.0f64; 6];
        for op in trace(&m, dims) {
            let i = match op {
                Op::Conv(..) => 0,
                Op::Bn(bn, d) => {
                    sums[5] += op_time(&Op::BurnBn(bn, d), ConvImpl::Matmul);
                    1
                }
                Op::BurnBn(..) => 5,
                Op::Relu(..) => 2,
                Op::Add(..) => 3,
                Op::MaxPool(..) | Op::Pool(..) => 4,
            };
            sums[i] += op_time(&op, ConvImpl::Matmul);
        }
        let pct = |t: f64| format!("{:.0} ms ({:.0}%)", t * 1e3, 100.0 * t / step);
        let stem = if small { "small stem" } else { "standard stem" };
        println!(
            "| {arch} {stem} | {b}×3×{side}×{side} | {:.0} ms | {} | {} | {} | {} | {} | {:.0} ms |",
            step * 1e3,
            pct(sums[0]),
            pct(sums[1]),
            pct(sums[2]),
            pct(sums[3]),
            pct(sums[4]),
            sums[5] * 1e3
        );
    }
}

/// Where the batched layout stops paying for 1×1 convs, against the default pick.
fn section_layout() {
    println!("\n## 1×1 layout sweep: fwd + bwd ms, batch 32");
    println!("| conv | side | batched | rows | picked |");
    println!("|---|---|---|---|---|");
    for &(cin, cout) in &[(256usize, 64usize), (64, 256), (512, 128), (128, 512), (1024, 256), (256, 1024), (512, 512), (2048, 512), (512, 2048)] {
        for &side in &[2usize, 4, 8, 16, 32] {
            if cin.max(cout) * side * side > 512 * 16 * 16 {
                continue; // bigger than any map of the nets we train at ≤64 px
            }
            let conv: Conv2d<B> = conv_cfg(cin, cout, 1, 1, 0).init(&dev());
            let x = rand4([32, cin, side, side]);
            let t = compare(
                &mut [
                    &mut || conv_step(&conv, &x, true, Path::Batched),
                    &mut || conv_step(&conv, &x, true, Path::Rows),
                    &mut || conv_step(&conv, &x, true, Path::Auto),
                ],
                3,
                0.5,
            );
            println!("| 1×1 {cin}→{cout} | {side} | {:.2} | {:.2} | {:.2} |", t[0] * 1e3, t[1] * 1e3, t[2] * 1e3);
        }
    }
}

/// Where the time of one im2col convolution goes (plain Flex, no autodiff, ms): the obvious
/// im2col from shifted slices against the row gather this crate uses, and the GEMMs.
fn section_parts() {
    use burn::tensor::{IndexingUpdateOp, Int, Slice, TensorData};
    type F = Flex;
    println!("\n## parts of a 3×3 64→64 conv on [32,64,32,32] (ms)");
    let d = Default::default();
    let (b, c, o, h) = (32usize, 64usize, 64usize, 32usize);
    let (n, k) = (h * h, 9 * c);
    let ms = |f: &dyn Fn()| compare(&mut [&mut || f()], 3, 0.2)[0] * 1e3;
    let gflops = |t: f64| 2.0 * (b * n * k * o) as f64 / t / 1e6;
    let randn = |dims: [usize; 2]| Tensor::<F, 2>::random(dims, Distribution::Normal(0.0, 1.0), &d);
    let x = Tensor::<F, 4>::random([b, c, h, h], Distribution::Normal(0.0, 1.0), &d);

    // Shifted strided slices of the padded input, concatenated: 3-D strided views, which
    // Flex copies element by element; autodiff's col2im is 9 zero tensors + slice_assign.
    let xp = Tensor::<F, 4>::zeros([b, c, h + 2, h + 2], &d).slice_assign([0..b, 0..c, 1..h + 1, 1..h + 1], x.clone());
    let taps = || -> Vec<Tensor<F, 4>> {
        (0..9)
            .map(|t| xp.clone().slice([Slice::full(), Slice::full(), Slice::from(t / 3..t / 3 + h), Slice::from(t % 3..t % 3 + h)]))
            .collect()
    };
    println!("im2col by slices + cat: {:.1}", ms(&|| drop(Tensor::cat(taps(), 1))));
    let gcols = Tensor::<F, 4>::random([b, k, h, h], Distribution::Normal(0.0, 1.0), &d);
    let t = ms(&|| {
        let parts = (0..9).map(|t| {
            let part = gcols.clone().slice([Slice::full(), Slice::from(t * c..(t + 1) * c), Slice::full(), Slice::full()]);
            Tensor::<F, 4>::zeros([b, c, h + 2, h + 2], &d).slice_assign([0..b, 0..c, t / 3..t / 3 + h, t % 3..t % 3 + h], part)
        });
        drop(parts.reduce(|a, z| a + z))
    });
    println!("col2im as autodiff does it for slices (9 × zeros + slice_assign, 8 adds): {t:.1}");

    // Row gather on the position-major input.
    println!(
        "2-D transpose [B·C, S] → [S·B, C] (done 4× per conv, fwd + bwd): {:.1}",
        ms(&|| drop(x.clone().reshape([b * c, n]).transpose().reshape([n * b, c])))
    );
    let pos = |t: usize, p: usize| -> i64 {
        let (r, q) = ((p / h + t / 3) as i64 - 1, (p % h + t % 3) as i64 - 1);
        if r < 0 || q < 0 || r >= h as i64 || q >= h as i64 { n as i64 } else { r * h as i64 + q }
    };
    let idx: Vec<i64> = (0..n).flat_map(|p| (0..b).flat_map(move |bi| (0..9).map(move |t| pos(t, p) * b as i64 + bi as i64))).collect();
    let idx = Tensor::<F, 1, Int>::from_data(TensorData::new(idx, [9 * n * b]), &d);
    let xr = randn([(n + 1) * b, c]);
    println!("im2col by row select: {:.1}", ms(&|| drop(xr.clone().select(0, idx.clone()))));
    let gr = randn([9 * n * b, c]);
    let t = ms(&|| drop(Tensor::<F, 2>::zeros([(n + 1) * b, c], &d).select_assign(0, idx.clone(), gr.clone(), IndexingUpdateOp::Add)));
    println!("col2im by row select_add: {t:.1}");
    println!("same bytes, cat of 9 contiguous copies (allocation + page-fault bound): {:.1}", ms(&|| drop(Tensor::cat(vec![xr.clone(); 9], 0))));

    // The three GEMMs of forward + backward, and a reference square one.
    let (cols, w, g) = (randn([n * b, k]), randn([k, o]), randn([n * b, o]));
    let t = ms(&|| drop(cols.clone().matmul(w.clone())));
    println!("forward cols·W [{},{k}]x[{k},{o}]: {t:.1} ({:.0} GFLOP/s)", n * b, gflops(t));
    let t = ms(&|| drop(cols.clone().transpose().matmul(g.clone())));
    println!("weight grad colsᵀ·g: {t:.1} ({:.0} GFLOP/s)", gflops(t));
    let t = ms(&|| drop(g.clone().matmul(w.clone().transpose())));
    println!("column grad g·Wᵀ (K = {o}, output-bound): {t:.1} ({:.0} GFLOP/s)", gflops(t));
    let sq = randn([1024, 1024]);
    let t = ms(&|| drop(sq.clone().matmul(sq.clone())));
    println!("reference matmul 1024³: {t:.1} ({:.0} GFLOP/s)", 2.0 * 1024f64.powi(3) / t / 1e6);
}

/// Where the time of a batch norm goes, op by op (plain Flex, [32, 64, 1024]).
fn section_bn_parts() {
    type F = Flex;
    let d = Default::default();
    let (b, c, n) = (32usize, 64usize, 1024usize);
    let x = Tensor::<F, 3>::random([b, c, n], Distribution::Normal(0.0, 1.0), &d);
    let v = Tensor::<F, 3>::random([1, c, 1], Distribution::Normal(0.0, 1.0), &d);
    let v4 = Tensor::<F, 4>::random([1, c, 1, 1], Distribution::Normal(0.0, 1.0), &d);
    let x4 = x.clone().reshape([b, c, 32, 32]);
    let y = Tensor::<F, 3>::random([b, c, n], Distribution::Normal(0.0, 1.0), &d);
    let ms = |f: &mut dyn FnMut()| compare(&mut [f], 5, 0.2)[0] * 1e3;
    println!("\n## batch-norm parts, [32, 64, 1024] (ms)");
    println!("x + y (same shape): {:.2}", ms(&mut || drop(x.clone() + y.clone())));
    println!("x * y (same shape): {:.2}", ms(&mut || drop(x.clone() * y.clone())));
    println!("x - v, v [1,C,1] broadcast: {:.2}", ms(&mut || drop(x.clone() - v.clone())));
    println!("x * v, v [1,C,1] broadcast: {:.2}", ms(&mut || drop(x.clone() * v.clone())));
    println!("x4 * v4, [1,C,1,1] broadcast: {:.2}", ms(&mut || drop(x4.clone() * v4.clone())));
    println!("x.square(): {:.2}", ms(&mut || drop(x.clone().square())));
    println!("x.mul_scalar(2): {:.2}", ms(&mut || drop(x.clone().mul_scalar(2.0))));
    println!("relu(x): {:.2}", ms(&mut || drop(relu(x.clone()))));
    println!("x.mean_dim(2): {:.2}", ms(&mut || drop(x.clone().mean_dim(2))));
    println!("x.sum_dim(2): {:.2}", ms(&mut || drop(x.clone().sum_dim(2))));
    println!("x.sum_dim(0): {:.2}", ms(&mut || drop(x.clone().sum_dim(0))));
    println!("x.sum_dim(1): {:.2}", ms(&mut || drop(x.clone().sum_dim(1))));
    let m = x.clone().mean_dim(2);
    println!("[B,C,1].mean_dim(0): {:.2}", ms(&mut || drop(m.clone().mean_dim(0))));
    println!("v.expand([B,C,N]) materialised: {:.2}", ms(&mut || drop(v.clone().expand([b, c, n]) + y.clone())));
    println!("x.swap_dims(0,1).reshape([C, B·N]) (Burn's BN): {:.2}", ms(&mut || drop(x.clone().swap_dims(0, 1).reshape([c, b * n]))));
    type A = B;
    let xa = Tensor::<A, 3>::random([b, c, n], Distribution::Normal(0.0, 1.0), &Default::default());
    let va = Tensor::<A, 3>::random([1, c, 1], Distribution::Normal(0.0, 1.0), &Default::default());
    println!("autodiff: (x * v).sum() fwd+bwd, v tracked: {:.2}", ms(&mut || drop((xa.clone().require_grad() * va.clone().require_grad()).sum().backward())));
    println!("autodiff: (x + v).sum() fwd+bwd, v tracked: {:.2}", ms(&mut || drop((xa.clone().require_grad() + va.clone().require_grad()).sum().backward())));
    println!("autodiff: relu(x).sum() fwd+bwd: {:.2}", ms(&mut || drop(relu(xa.clone().require_grad()).sum().backward())));
    println!("autodiff: x.mean_dim(2).sum() fwd+bwd: {:.2}", ms(&mut || drop(xa.clone().require_grad().mean_dim(2).sum().backward())));
    println!("autodiff: x.sum() fwd+bwd: {:.2}", ms(&mut || drop(xa.clone().require_grad().sum().backward())));
    let bn: BatchNorm<A> = burn::nn::BatchNormConfig::new(c).init(&Default::default());
    let x4a = xa.clone().reshape([b, c, 32, 32]);
    println!("autodiff: Burn BatchNorm fwd+bwd: {:.2}", ms(&mut || drop(bn.forward(x4a.clone().require_grad()).sum().backward())));
    println!(
        "autodiff: batch_norm_forward fwd+bwd: {:.2}",
        ms(&mut || drop(sca_backbone::norm::batch_norm_forward(&bn, x4a.clone().require_grad()).sum().backward()))
    );
}

/// GEMM orientation: the same product with the big dimension as M or as N (min of runs).
fn section_gemm() {
    type F = Flex;
    let d = Default::default();
    println!("\n## gemm orientation (ms, min of interleaved runs)");
    for &(big, k, o) in &[(32768usize, 576usize, 64usize), (32768, 64, 576), (8192, 1152, 128), (2048, 2304, 256), (512, 4608, 512), (8192, 256, 64), (8192, 64, 256)] {
        let a = Tensor::<F, 2>::random([big, k], Distribution::Normal(0.0, 1.0), &d);
        let w = Tensor::<F, 2>::random([k, o], Distribution::Normal(0.0, 1.0), &d);
        let at = Tensor::<F, 2>::random([k, big], Distribution::Normal(0.0, 1.0), &d);
        let wt = Tensor::<F, 2>::random([o, k], Distribution::Normal(0.0, 1.0), &d);
        let mut best = [f64::MAX; 3];
        for _ in 0..5 {
            let t = Instant::now();
            drop(a.clone().matmul(w.clone()));
            best[0] = best[0].min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            drop(wt.clone().matmul(at.clone()));
            best[1] = best[1].min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            drop(at.clone().transpose().matmul(wt.clone().transpose()));
            best[2] = best[2].min(t.elapsed().as_secs_f64());
        }
        let gf = |t: f64| 2.0 * (big * k * o) as f64 / t / 1e9;
        println!(
            "[{big},{k}]x[{k},{o}]: {:.1} ms ({:.0} GFLOP/s) | [{o},{k}]x[{k},{big}]: {:.1} ms ({:.0}) | strided views [{big},{k}]x[{k},{o}]: {:.1} ms ({:.0})",
            best[0] * 1e3, gf(best[0]), best[1] * 1e3, gf(best[1]), best[2] * 1e3, gf(best[2])
        );
    }
}

/// Keeps freed memory in the heap instead of returning it to the OS: glibc serves blocks
/// above 32 MiB with fresh mmaps, and their first-touch page faults cost more than the
/// arithmetic on them here (im2col columns are that big). Same effect as
/// `GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...`.
fn keep_freed_memory() {
    // SAFETY: plain glibc tuning calls made before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let system_malloc = args.iter().any(|a| a == "--system-malloc");
    args.retain(|a| a != "--system-malloc");
    if !system_malloc {
        keep_freed_memory();
    }
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    println!(
        "conv_bench: Flex backend, {} threads, {}",
        rayon_threads(),
        if system_malloc { "glibc malloc defaults" } else { "malloc keeps freed memory (M_MMAP_MAX=0)" }
    );
    if want("bnparts") && !args.is_empty() {
        section_bn_parts();
    }
    if want("gemm") && !args.is_empty() {
        section_gemm();
    }
    if want("parts") && !args.is_empty() {
        section_parts();
    }
    if want("layout") && !args.is_empty() {
        section_layout();
    }
    if want("shapes") {
        section_shapes();
    }
    if want("steps") {
        section_steps();
    }
    if want("inference") {
        section_inference();
    }
    if want("profile") {
        section_profile();
    }
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
