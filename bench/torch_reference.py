#!/usr/bin/env python3
"""PyTorch reference for the GPU benchmark: the same shapes as `sca bench gpu`
(`cargo xtask bench gpu`), run through torch + torchvision so the two can be set side by side
on one machine.

Cases:
  swav_train  ResNet-50 SwAV train step: torchvision resnet50 (fc = identity), head
              Linear(2048,2048)-BN1d-ReLU-Linear(2048,128), L2-normalised, prototypes
              Linear(128,3000,bias=False); swapped-prediction loss with Sinkhorn-Knopp codes
              (eps 0.05, 3 iterations, no grad, temperature 0.1) over 2 crops of SIZE px,
              BATCH per crop; SGD momentum 0.9. images/s counts 2 x BATCH images per step.
  features    forward-only pooled 2048-d features, eval mode, no grad, FEATURE_BATCH per batch.
  convs       every distinct convolution of resnet50 at SIZE px (as `sca bench convs`), each
              pass alone on cuDNN: forward, data gradient (conv2d_input), weight gradient
              (conv2d_weight), CONV_BATCH images; rows keyed by the same shape string as ours,
              so bench/compare_convs.py can set them side by side.
Precisions (CUDA): fp32 (TF32 off for matmul and cuDNN), tf32 (TF32 on), bf16 (autocast bf16 +
channels_last). On CPU only fp32 runs.

Usage on a GPU machine (needs only python3, torch, torchvision):
  python3 bench/torch_reference.py [--json torch.json]
CPU smoke check:
  python3 bench/torch_reference.py --device cpu --batch 4 --feature-batch 8 --size 64 --steps 2
Inputs are random (torch.randn, fixed seed); no data loading is timed.
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

WARMUP = 3
EPSILON, SINKHORN_ITERS, TEMPERATURE = 0.05, 3, 0.1
PROTOTYPES, PROJ_DIM, HIDDEN = 3000, 128, 2048


class SwAV(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = torchvision.models.resnet50()
        self.backbone.fc = nn.Identity()
        self.head = nn.Sequential(
            nn.Linear(2048, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU(inplace=True), nn.Linear(HIDDEN, PROJ_DIM)
        )
        self.prototypes = nn.Linear(PROJ_DIM, PROTOTYPES, bias=False)

    def forward(self, x):
        z = F.normalize(self.head(self.backbone(x)), dim=1)
        return self.prototypes(z)


@torch.no_grad()
def sinkhorn(scores):
    """SwAV `distributed_sinkhorn`, one process; in fp32 whatever the autocast precision."""
    q = torch.exp((scores.float() - scores.float().max()) / EPSILON).t()  # max shift keeps exp finite, cancels below
    q /= q.sum()
    k, b = q.shape
    for _ in range(SINKHORN_ITERS):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def swav_loss(scores):
    crops = scores.float().chunk(2)  # autocast would give bf16 scores; the loss is fp32 as in SwAV
    log_p = [F.log_softmax(s / TEMPERATURE, dim=1) for s in crops]
    loss = 0.0
    for a in range(2):
        q = sinkhorn(crops[a])
        loss = loss - (q * log_p[1 - a]).sum(dim=1).mean()
    return loss / 2


def set_precision(precision):
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn, steps):
    """First call timed alone (cudnn autotune, allocator growth), WARMUP more, then `steps`."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(WARMUP):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return first, (time.perf_counter() - t0) / steps


def autocast(device, precision):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def bench_train(device, precision, args):
    torch.manual_seed(0)
    fmt = torch.channels_last if precision == "bf16" else torch.contiguous_format
    model = SwAV().to(device, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6)
    # Both crops are 224 px, so SwAV runs them through the backbone as one batch.
    x = torch.randn(2 * args.batch, 3, args.size, args.size, device=device).to(memory_format=fmt)

    def step():
        with torch.no_grad():  # SwAV renormalises the prototypes before every step
            model.prototypes.weight.copy_(F.normalize(model.prototypes.weight, dim=1))
        with autocast(device, precision):
            scores = model(x)
        loss = swav_loss(scores)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    first, per = timed(device, step, args.steps)
    return dict(case="swav_train", precision=precision, images_per_s=2 * args.batch / per,
                ms_per_step=per * 1e3, first_step_s=first, batch=args.batch)


def bench_features(device, precision, args):
    torch.manual_seed(0)
    fmt = torch.channels_last if precision == "bf16" else torch.contiguous_format
    model = torchvision.models.resnet50()
    model.fc = nn.Identity()
    model = model.to(device, memory_format=fmt).eval()
    x = torch.randn(args.feature_batch, 3, args.size, args.size, device=device).to(memory_format=fmt)

    def step():
        with torch.inference_mode(), autocast(device, precision):
            f = model(x)
        assert f.shape == (args.feature_batch, 2048)

    first, per = timed(device, step, args.steps)
    return dict(case="features", precision=precision, images_per_s=args.feature_batch / per,
                ms_per_step=per * 1e3, first_step_s=first, batch=args.feature_batch)


def pair(v):
    """Stride / padding / dilation as `sca bench convs` writes them: one number when equal."""
    return str(v[0]) if v[0] == v[1] else f"{v[0]},{v[1]}"


def resnet50_convs(size):
    """The distinct convolutions of torchvision's resnet50 on SIZE px inputs, in the order a
    forward pass meets them: ((input CxHxW, weight shape, stride, padding, dilation), names)."""
    model = torchvision.models.resnet50().eval()
    seen, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            def hook(mod, inp, _out, name=name):
                key = (tuple(inp[0].shape[1:]), tuple(mod.weight.shape), mod.stride, mod.padding, mod.dilation)
                seen.setdefault(key, []).append(name)
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return list(seen.items())


def shape_key(spec, dtype_name):
    (c, h, w), (o, ci, kh, kw), stride, padding, dilation = spec
    return f"{c}x{h}x{w} * {o}x{ci}x{kh}x{kw} s{pair(stride)} p{pair(padding)} d{pair(dilation)} {dtype_name}"


def bench_convs(device, precision, args):
    """One row per (shape, pass): milliseconds per call on cuDNN (or the CPU's kernels)."""
    torch.manual_seed(0)
    dtype, fmt = (torch.bfloat16, torch.channels_last) if precision == "bf16" else (torch.float32, torch.contiguous_format)
    rows = []
    for spec, names in resnet50_convs(args.size):
        (c, h, w), w_shape, stride, padding, dilation = spec
        x = torch.randn(args.conv_batch, c, h, w, device=device, dtype=dtype).to(memory_format=fmt)
        wt = (0.05 * torch.randn(*w_shape, device=device, dtype=dtype)).to(memory_format=fmt)
        dy = torch.randn_like(F.conv2d(x, wt, None, stride, padding, dilation))
        passes = {
            "forward": lambda: F.conv2d(x, wt, None, stride, padding, dilation),
            "data": lambda: torch.nn.grad.conv2d_input(x.shape, wt, dy, stride, padding, dilation),
            "weight": lambda: torch.nn.grad.conv2d_weight(x, wt.shape, dy, stride, padding, dilation),
        }
        for name, fn in passes.items():
            if name == "data" and "conv1" in names:
                continue  # the stem's input is the images: training never needs its gradient
            first, per = timed(device, fn, args.steps)
            rows.append(dict(case="convs", precision=precision, shape=shape_key(spec, "bf16" if precision == "bf16" else "f32"),
                             layers=names, **{"pass": name}, ms=per * 1e3, first_s=first, batch=args.conv_batch))
    return rows


def print_convs(rows):
    """Per precision: the time of one network pass (each shape's ms times its layer count)."""
    for p in dict.fromkeys(r["precision"] for r in rows):
        totals = {}
        for r in rows:
            if r["precision"] == p:
                totals[r["pass"]] = totals.get(r["pass"], 0.0) + r["ms"] * len(r["layers"])
        order = ["forward", "data", "weight"]
        print(f"convs {p:<5} one network pass: " + ", ".join(f"{k} {totals[k]:.1f} ms" for k in order if k in totals))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64, help="train batch per crop (2 crops)")
    ap.add_argument("--feature-batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=20, help=f"timed steps, after the first and {WARMUP} warm-up")
    ap.add_argument("--precisions", default="fp32,tf32,bf16")
    ap.add_argument("--conv-batch", type=int, default=128, help="images per convolution in the convs case")
    ap.add_argument("--cases", default="train,features", help="which of train (a), features (c), convs")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()

    device = torch.device(args.device)
    precisions = [p for p in args.precisions.split(",") if p]
    for p in precisions:
        if p not in ("fp32", "tf32", "bf16"):
            raise SystemExit(f"unknown precision {p!r}")
    if device.type == "cpu":
        if precisions != ["fp32"]:
            print("CPU: only fp32 runs")
        precisions = ["fp32"]
        name = "cpu"
    else:
        torch.cuda.init()
        torch.zeros(1, device=device)  # create the context here, not inside the first case's first step
        name = torch.cuda.get_device_name(device)
    torch.backends.cudnn.benchmark = True  # autotune: paid in the first step, reported there

    rows, conv_rows = [], []
    cases = {"train": bench_train, "features": bench_features, "convs": bench_convs}
    unknown = [c for c in args.cases.split(",") if c and c not in cases]
    if unknown:
        raise SystemExit(f"unknown case {unknown[0]!r} (expected train, features or convs)")
    for bench in [cases[c] for c in args.cases.split(",") if c]:
        for p in precisions:
            set_precision(p)
            if bench is bench_convs:
                conv_rows += bench(device, p, args)
                print_convs([r for r in conv_rows if r["precision"] == p])
            else:
                row = bench(device, p, args)
                rows.append(row)
                print(f"{row['case']:<11} {p:<5} {row['images_per_s']:9.1f} images/s  {row['ms_per_step']:9.1f} ms/step",
                      flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # each case starts from a clean allocator

    print(f"\ntorch {torch.__version__}, torchvision {torchvision.__version__}, {name}; "
          f"train batch {args.batch}x2 crops, feature batch {args.feature_batch}, conv batch {args.conv_batch}, "
          f"{args.size} px, {args.steps} steps")
    header = ("case", "precision", "images/s", "ms/step", "first step s")
    cells = [header] + [(r["case"], r["precision"], f"{r['images_per_s']:.1f}", f"{r['ms_per_step']:.1f}",
                         f"{r['first_step_s']:.2f}") for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    for c in cells if rows else []:
        print("  ".join(s.ljust(w) if i < 2 else s.rjust(w) for i, (s, w) in enumerate(zip(c, widths))))

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "rows": rows, "convs": conv_rows}, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
