#!/usr/bin/env python3
"""Our convolution kernels against PyTorch's (cuDNN), layer by layer.

Joins `sca bench convs --json OURS` with `bench/torch_reference.py --cases convs --json TORCH`
on the shape key both write (`CxHxW * OxCxKhxKw s.. p.. d.. dtype`) and prints, per shape and
pass: our built-in kernel's time, our fastest kernel and its time, PyTorch's time, and how
many times slower our fastest is; then the network totals (each shape's time times its layer
count). Our f32 convolutions run on TF32 tensor cores, so f32 rows are set against PyTorch's
`tf32` rows by default (`--f32-as fp32` for strict fp32; the CPU only has fp32). Our rows
measured with channels-last activations (`sca bench convs --channels-last`, keys ending in
` nhwc`) meet PyTorch's rows of the same shape (channels_last in bf16, contiguous in f32).

  python3 bench/compare_convs.py OURS.json TORCH.json [--f32-as tf32|fp32]
"""
import argparse
import json
import sys

BUILT_IN = ("simple_sync_cyclic_cmma", "flex")  # what runs without a plan (CUDA, CPU)


def load(path, key):
    try:
        with open(path) as f:
            return json.load(f)[key]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"{path}: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ours")
    ap.add_argument("torch")
    ap.add_argument("--f32-as", choices=["tf32", "fp32"], default="tf32", help="PyTorch precision our f32 rows meet")
    args = ap.parse_args()
    ours, theirs = load(args.ours, "rows"), load(args.torch, "convs")

    # PyTorch: (shape, pass) -> ms, f32 keys from the chosen precision (fp32 if that is absent).
    torch_ms = {}
    for want in ("fp32", args.f32_as, "bf16"):
        for r in theirs:
            if r["precision"] == want:
                torch_ms[(r["shape"], r["pass"])] = r["ms"]

    table, totals = [], {}
    keys = list(dict.fromkeys((r["shape"], r["pass"]) for r in ours))
    for shape, pas in keys:
        runs = [r for r in ours if r["shape"] == shape and r["pass"] == pas and isinstance(r.get("ms"), (int, float))]
        if not runs:
            continue
        n = len(runs[0]["layers"])
        best = min(runs, key=lambda r: r["ms"])
        built_in = next((r["ms"] for r in runs if r["kernel"] in BUILT_IN), None)
        ref = torch_ms.get((shape.removesuffix(" nhwc"), pas))
        table.append((shape, n, pas, built_in, best["kernel"], best["ms"], ref))
        t = totals.setdefault(pas, [0.0, 0.0, 0.0, True])
        t[0] += n * (built_in or 0.0)
        t[1] += n * best["ms"]
        t[2] += n * (ref or 0.0)
        t[3] &= built_in is not None and ref is not None
    if not table:
        sys.exit(f"{args.ours}: no timed rows")

    fmt = lambda v: f"{v:9.3f}" if v is not None else f"{'-':>9}"
    print(f"{'shape':<44} {'n':>3} {'pass':<7} {'built-in':>9} {'fastest (kernel)':>36} {'pytorch':>9} {'x slower':>8}")
    for shape, n, pas, built_in, kernel, ms, ref in table:
        ratio = f"{ms / ref:8.2f}" if ref else f"{'-':>8}"
        print(f"{shape:<44} {n:>3} {pas:<7} {fmt(built_in)} {ms:9.3f} ({kernel[:24]:>24}) {fmt(ref)} {ratio}")
    print("\none network pass, ms (layers x ms)")
    print(f"{'pass':<8} {'built-in':>10} {'fastest':>10} {'pytorch':>10} {'x slower':>9}")
    order = ["forward", "data", "weight"]
    for pas, (b, f, r, complete) in sorted(totals.items(), key=lambda kv: (order + [kv[0]]).index(kv[0])):
        note = "" if complete else "  (some shapes lack a built-in or PyTorch time)"
        ratio = f"{f / r:9.2f}" if r else f"{'-':>9}"
        print(f"{pas:<8} {b:10.1f} {f:10.1f} {r:10.1f} {ratio}{note}")


if __name__ == "__main__":
    main()
