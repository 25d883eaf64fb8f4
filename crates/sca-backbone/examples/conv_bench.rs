//! Convolution speed on the CPU backend: Burn's `conv2d` against the matmul path, per conv
//! shape and per ResNet training step (forward + backward), plus a per-op-class profile.
//!
//! `cargo run --release -p sca-backbone --example conv_bench [shapes|steps|profile|layout]...`
//! (all sections when none is named).

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Distribution, Tensor};
use sca_backbone::conv::{conv_forward, conv_matmul_with_layout, Layout};
use sca_backbone::{Arch, ConvImpl, ResNet, ResNetConfig};

type B = Autodiff<Flex>;

/// Median seconds of `f` over at least `reps` runs and `min_s` seconds, after one warm-up.
fn time(mut f: impl FnMut(), reps: usize, min_s: f64) -> f64 {
    f();
    let start = Instant::now();
    let mut t = Vec::new();
    while t.len() < reps || start.elapsed().as_secs_f64() < min_s {
        let s = Instant::now();
        f();
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
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
    Flat,
    Auto,
}

fn run_conv(conv: &Conv2d<B>, x: Tensor<B, 4>, path: Path) -> Tensor<B, 4> {
    match path {
        Path::Native => conv_forward(conv, x, ConvImpl::Native),
        Path::Batched => conv_matmul_with_layout(conv, x, Layout::Batched),
        Path::Flat => conv_matmul_with_layout(conv, x, Layout::Flat),
        Path::Auto => conv_forward(conv, x, ConvImpl::Matmul),
    }
}

/// One forward + backward; the input gradient only where a network would need it.
fn conv_step(conv: &Conv2d<B>, dims: [usize; 4], x_grad: bool, path: Path) {
    let x = rand4(dims).set_require_grad(x_grad);
    let grads = run_conv(conv, x, path).sum().backward();
    let gw = conv.weight.val().grad(&grads).expect("weight grad");
    std::hint::black_box(gw);
}

fn section_shapes() {
    println!("\n## (a) one convolution, forward + backward (ms; GFLOP/s counts fwd + dx + dW, dx skipped for 3-channel stems)");
    println!("| conv | input [B,C,H,W] | native | matmul batched | matmul flat | auto (default) | best speed-up |");
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
        let t: Vec<f64> = [Path::Native, Path::Batched, Path::Flat, Path::Auto]
            .iter()
            .map(|&path| time(|| conv_step(&conv, dims, x_grad, path), 3, 0.3))
            .collect();
        let cell = |s: f64| format!("{:.1} ({:.0})", s * 1e3, flops / s / 1e9);
        let best = t[1].min(t[2]);
        println!(
            "| {k}×{k}/{s} {cin}→{cout} | [{b},{cin},{side},{side}] | {} | {} | {} | {} | {:.2}× |",
            cell(t[0]),
            cell(t[1]),
            cell(t[2]),
            cell(t[3]),
            t[0] / best
        );
    }
}

fn model(arch: Arch, small: bool, imp: ConvImpl) -> ResNet<B> {
    ResNetConfig::new(arch).with_small_stem(small).with_conv_impl(imp).init(&dev())
}

/// A training step without the optimiser: forward, loss, backward, all parameter grads.
fn train_step(m: &ResNet<B>, x: Tensor<B, 4>) {
    let f = m.forward_features(x);
    let grads = f.powi_scalar(2).mean().backward();
    std::hint::black_box(m.conv1.weight.val().grad(&grads).expect("stem grad"));
}

/// One op the network runs, with its input dims: the trace behind FLOP counts and the profile.
enum Op<'a> {
    Conv(&'a Conv2d<B>, [usize; 4], bool),
    Bn(&'a BatchNorm<B>, [usize; 4]),
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
    println!("| model | input | native | matmul | speed-up |");
    println!("|---|---|---|---|---|");
    for (arch, small, side, b) in STEPS {
        let dims = [b, 3, side, side];
        let mut row = Vec::new();
        for imp in ConvImpl::ALL {
            let m = model(arch, small, imp);
            let flops = step_flops(&m, dims);
            let s = time(|| train_step(&m, rand4(dims)), 3, 1.0);
            row.push((b as f64 / s, flops / s / 1e9));
        }
        let stem = if small { "small stem" } else { "standard stem" };
        println!(
            "| {arch} {stem} | {b}×3×{side}×{side} | {:.1} img/s ({:.0}) | {:.1} img/s ({:.0}) | {:.2}× |",
            row[0].0,
            row[0].1,
            row[1].0,
            row[1].1,
            row[1].0 / row[0].0
        );
    }
}

/// Forward + backward of one op in isolation, minus the cost of `sum().backward()` itself.
fn op_time(op: &Op, imp: ConvImpl) -> f64 {
    let reps = 3;
    let base = |d: [usize; 4]| {
        time(
            || {
                let x = rand4(d).require_grad();
                std::hint::black_box(x.clone().sum().backward());
            },
            reps,
            0.0,
        )
    };
    let run = |d: [usize; 4], f: &dyn Fn(Tensor<B, 4>) -> Tensor<B, 4>| {
        let t = time(
            || {
                let x = rand4(d).require_grad();
                std::hint::black_box(f(x).sum().backward());
            },
            reps,
            0.0,
        );
        (t - base(d)).max(0.0)
    };
    match op {
        Op::Conv(c, d, xg) => {
            let t = time(
                || {
                    let x = rand4(*d).set_require_grad(*xg);
                    std::hint::black_box(conv_forward(c, x, imp).sum().backward());
                },
                reps,
                0.0,
            );
            let out = [d[0], c.weight.dims()[0], out_side(c, d[2]), out_side(c, d[3])];
            (t - base(out)).max(0.0)
        }
        Op::Bn(bn, d) => run(*d, &|x| bn.forward(x)),
        Op::Relu(d) => run(*d, &relu),
        Op::Add(d) => {
            let y = rand4(*d).require_grad();
            run(*d, &|x| x + y.clone())
        }
        Op::MaxPool(d) => run(*d, &|x| {
            burn::tensor::module::max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], false)
        }),
        Op::Pool(d) => {
            let t = time(
                || {
                    let x = rand4(*d).require_grad();
                    std::hint::black_box(sca_backbone::resnet::global_avg_pool(x).sum().backward());
                },
                reps,
                0.0,
            );
            (t - time(
                || {
                    std::hint::black_box(rand4([d[0], d[1], 1, 1]).require_grad().sum().backward());
                },
                reps,
                0.0,
            ))
                .max(0.0)
        }
    }
}

fn section_profile() {
    println!("\n## (c) profile: each op of the step run alone (fwd + bwd, summed per class), matmul convs");
    println!("| model | input | step | conv | batchnorm | relu | residual add | max-pool + avg-pool |");
    println!("|---|---|---|---|---|---|---|---|");
    for (arch, small, side, b) in STEPS {
        let dims = [b, 3, side, side];
        let m = model(arch, small, ConvImpl::Matmul);
        let step = time(|| train_step(&m, rand4(dims)), 3, 0.0);
        let mut sums = [0.0f64; 5];
        for op in trace(&m, dims) {
            let i = match op {
                Op::Conv(..) => 0,
                Op::Bn(..) => 1,
                Op::Relu(..) => 2,
                Op::Add(..) => 3,
                Op::MaxPool(..) | Op::Pool(..) => 4,
            };
            sums[i] += op_time(&op, ConvImpl::Matmul);
        }
        let pct = |t: f64| format!("{:.0} ms ({:.0}%)", t * 1e3, 100.0 * t / step);
        let stem = if small { "small stem" } else { "standard stem" };
        println!(
            "| {arch} {stem} | {b}×3×{side}×{side} | {:.0} ms | {} | {} | {} | {} | {} |",
            step * 1e3,
            pct(sums[0]),
            pct(sums[1]),
            pct(sums[2]),
            pct(sums[3]),
            pct(sums[4])
        );
    }
}

/// Where the batched layout stops paying: 3×3 and 1×1 convs over spatial sizes.
fn section_layout() {
    println!("\n## layout sweep: fwd + bwd ms, batched vs flat");
    println!("| conv | B | side | batched | flat |");
    println!("|---|---|---|---|---|");
    for &(cin, cout, k) in &[(64usize, 64usize, 3usize), (128, 128, 3), (256, 256, 3), (256, 64, 1), (64, 256, 1), (512, 512, 1)] {
        for &side in &[4usize, 8, 16, 32] {
            let b = 32;
            let conv: Conv2d<B> = conv_cfg(cin, cout, k, 1, k / 2).init(&dev());
            let dims = [b, cin, side, side];
            let tb = time(|| conv_step(&conv, dims, true, Path::Batched), 3, 0.2);
            let tf = time(|| conv_step(&conv, dims, true, Path::Flat), 3, 0.2);
            println!("| {k}×{k} {cin}→{cout} | {b} | {side} | {:.2} | {:.2} |", tb * 1e3, tf * 1e3);
        }
    }
}

/// Where the time of one im2col convolution goes (plain Flex, no autodiff).
fn section_parts() {
    use burn::tensor::Slice;
    type F = Flex;
    println!("\n## parts of a 3×3 64→64 conv, [32,64,32,32], flat layout (ms)");
    let d = Default::default();
    let (b, c, o, h) = (32usize, 64usize, 64usize, 32usize);
    let x = Tensor::<F, 4>::random([b, c, h, h], Distribution::Normal(0.0, 1.0), &d);
    let w = Tensor::<F, 2>::random([o, 9 * c], Distribution::Normal(0.0, 1.0), &d);
    let pad = || Tensor::<F, 4>::zeros([b, c, h + 2, h + 2], &d).slice_assign([0..b, 0..c, 1..h + 1, 1..h + 1], x.clone());
    let xp = pad();
    let taps = || -> Vec<Tensor<F, 4>> {
        let xt = xp.clone().swap_dims(0, 1);
        (0..9)
            .map(|t| {
                let (i, j) = (t / 3, t % 3);
                xt.clone().slice([Slice::full(), Slice::full(), Slice::from(i..i + h), Slice::from(j..j + h)])
            })
            .collect()
    };
    let cols = Tensor::cat(taps(), 0).reshape([9 * c, b * h * h]);
    let g = Tensor::<F, 2>::random([o, b * h * h], Distribution::Normal(0.0, 1.0), &d);
    let ms = |f: &dyn Fn()| time(f, 3, 0.2) * 1e3;
    let flop = |m: usize, k: usize, n: usize, t: f64| 2.0 * (m * k * n) as f64 / t / 1e6;
    let t = ms(&|| drop(pad()));
    println!("pad (zeros + slice_assign): {t:.1}");
    let t = ms(&|| drop(Tensor::cat(taps(), 0)));
    println!("cat of 9 strided taps: {t:.1}");
    let t = ms(&|| drop(w.clone().matmul(cols.clone())));
    println!("matmul W·cols [64,576]x[576,32768]: {t:.1} ({:.0} GFLOP/s)", flop(o, 9 * c, b * h * h, t));
    let t = ms(&|| drop(w.clone().transpose().matmul(g.clone())));
    println!("matmul Wᵀ·g [576,64]x[64,32768]: {t:.1} ({:.0} GFLOP/s)", flop(o, 9 * c, b * h * h, t));
    let t = ms(&|| drop(g.clone().matmul(cols.clone().transpose())));
    println!("matmul g·colsᵀ [64,32768]x[32768,576]: {t:.1} ({:.0} GFLOP/s)", flop(o, 9 * c, b * h * h, t));
    let gcols = Tensor::<F, 4>::random([9 * c, b, h, h], Distribution::Normal(0.0, 1.0), &d);
    let t = ms(&|| {
        let mut acc: Option<Tensor<F, 4>> = None;
        for k in 0..9 {
            let (i, j) = (k / 3, k % 3);
            let part = gcols.clone().slice([Slice::from(k * c..(k + 1) * c), Slice::full(), Slice::full(), Slice::full()]);
            let z = Tensor::<F, 4>::zeros([c, b, h + 2, h + 2], &d).slice_assign([0..c, 0..b, i..i + h, j..j + h], part);
            acc = Some(match acc {
                Some(a) => a + z,
                None => z,
            });
        }
        drop(acc)
    });
    println!("col2im as autodiff does it (9 × zeros + slice_assign, 8 adds): {t:.1}");
    let big = Tensor::<F, 4>::random([b, c, h, h], Distribution::Normal(0.0, 1.0), &d);
    let t = ms(&|| drop(big.clone() + big.clone()));
    println!("one add of [32,64,32,32]: {t:.2}");
    let t = ms(&|| drop(big.clone().swap_dims(0, 1).reshape([c, b * h * h])));
    println!("one transpose copy of [32,64,32,32]: {t:.2}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    println!("conv_bench: Flex backend, {} rayon threads", rayon_threads());
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
    if want("profile") {
        section_profile();
    }
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
