#!/usr/bin/env python3
"""Checks the two files `sca export` writes against each other, key by key.

    python3 tests/python/check_export.py runs/NAME/export
    python3 tests/python/check_export.py --torchvision A.safetensors --detectron2 B.pkl

Needs numpy only: the safetensors file is parsed here (8-byte little-endian header
length, JSON header, raw data) and the pickle is loaded with Python's own `pickle`, the
way Detectron2 loads it. Exits 0 with a "skipped" line when numpy is missing.
"""
import argparse
import json
import os
import pickle
import struct
import sys

try:
    import numpy as np
except ImportError:
    print("check_export: skipped: numpy is not installed")
    sys.exit(0)

DTYPES = {"F32": "<f4", "I64": "<i8"}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    header.pop("__metadata__", None)
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype=DTYPES[info["dtype"]])
        out[name] = arr.reshape(info["shape"])
    return out


def detectron2_name(k):
    """MoCo's convert-pretrain-to-detectron2 renaming, written out independently."""
    if "layer" not in k:
        k = "stem." + k
    for t in [1, 2, 3, 4]:
        k = k.replace("layer{}".format(t), "res{}".format(t + 1))
    for t in [1, 2, 3]:
        k = k.replace("bn{}".format(t), "conv{}.norm".format(t))
    k = k.replace("downsample.0", "shortcut")
    return k.replace("downsample.1", "shortcut.norm")


def check(tv_path, d2_path):
    errors = []
    tv = read_safetensors(tv_path)
    fc = [k for k in tv if k.startswith("fc.")]
    if fc:
        errors.append("torchvision file still holds " + ", ".join(fc))

    with open(d2_path, "rb") as f:
        ckpt = pickle.load(f, encoding="latin1")  # as Detectron2's checkpointer does
    if not isinstance(ckpt, dict) or sorted(ckpt) != ["__author__", "matching_heuristics", "model"]:
        return errors + ["pickle top level is not {model, __author__, matching_heuristics}: %r" % (type(ckpt),)]
    if not isinstance(ckpt["__author__"], str) or not ckpt["__author__"]:
        errors.append("__author__ is not a non-empty str")
    if ckpt["matching_heuristics"] is not True:
        errors.append("matching_heuristics is not True")
    model = ckpt["model"]

    expected = [(detectron2_name(k), k) for k in tv if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    # Sets, not lists: a safetensors header keeps no order.
    missing = sorted({d for d, _ in expected} - set(model))
    extra = sorted(set(model) - {d for d, _ in expected})
    if missing or extra:
        errors.append("key sets differ: missing %s, extra %s" % (missing[:5], extra[:5]))
    for d2, name in expected:
        a = model.get(d2)
        if a is None:
            continue
        if not isinstance(a, np.ndarray) or a.dtype != np.float32:
            errors.append("%s is not a float32 ndarray: %r" % (d2, getattr(a, "dtype", type(a))))
        elif not a.flags["C_CONTIGUOUS"]:
            errors.append("%s is not in C order" % d2)
        elif a.shape != tv[name].shape:
            errors.append("%s has shape %s, %s has %s" % (d2, a.shape, name, tv[name].shape))
        elif a.tobytes() != tv[name].tobytes():
            errors.append("%s differs from %s" % (d2, name))
    if not errors:
        print(
            "check_export: ok: %d arrays in %s equal %s bit for bit (numpy %s, %d torchvision keys)"
            % (len(model), os.path.basename(d2_path), os.path.basename(tv_path), np.__version__, len(tv))
        )
    return errors


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export_dir", nargs="?", help="directory holding both files")
    p.add_argument("--torchvision", help="backbone_torchvision.safetensors")
    p.add_argument("--detectron2", help="backbone_detectron2.pkl")
    args = p.parse_args()
    tv = args.torchvision or (args.export_dir and os.path.join(args.export_dir, "backbone_torchvision.safetensors"))
    d2 = args.detectron2 or (args.export_dir and os.path.join(args.export_dir, "backbone_detectron2.pkl"))
    if not tv or not d2:
        p.error("give an export directory, or both --torchvision and --detectron2")
    errors = check(tv, d2)
    for e in errors[:20]:
        print("check_export: FAIL: " + e, file=sys.stderr)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
