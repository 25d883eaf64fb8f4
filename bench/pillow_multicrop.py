#!/usr/bin/env python3
"""The SwAV multi-crop pipeline (2x224 + 6x96) with Pillow + numpy, for comparison with
`sca data bench` on the same files and machine.

It follows what SwAV's data loader does through torchvision on PIL images, without torch:
decode + convert("RGB"); per crop RandomResizedCrop (crop, then bilinear resize),
horizontal flip p=0.5, ColorJitter(0.8, 0.8, 0.8, 0.2) in random order with p=0.8 (Pillow's
ImageEnhance for brightness/contrast/saturation, hue by shifting the HSV H channel),
RandomGrayscale p=0.2, GaussianBlur p=0.5 (ImageFilter.GaussianBlur, radius 0.1-2.0), then
ToTensor + Normalize as float32 numpy CHW.

Usage: python3 bench/pillow_multicrop.py DIR [--n 200]
  DIR: a folder of JPEGs (searched recursively), e.g. the one `sca data bench --jpegs DIR` fills.
Runs in one process on one core.
"""
import argparse
import math
import pathlib
import random
import time

import numpy as np
import PIL
from PIL import Image, ImageEnhance, ImageFilter

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CROPS = [(2, 224, 0.14, 1.0), (6, 96, 0.05, 0.14)]


def rrc_params(width, height, scale, ratio=(3 / 4, 4 / 3)):
    """torchvision RandomResizedCrop.get_params."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return random.randint(0, height - h), random.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def adjust_hue(img, factor):
    """torchvision.transforms.functional_pil.adjust_hue."""
    h, s, v = img.convert("HSV").split()
    np_h = np.array(h, dtype=np.uint8)
    np_h = (np_h.astype(np.int16) + int(factor * 255)).astype(np.uint8)  # wraps like uint8 addition
    return Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert("RGB")


def color_jitter(img, s=1.0):
    b, c, sat, hue = 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s
    ops = [
        lambda im: ImageEnhance.Brightness(im).enhance(random.uniform(max(0, 1 - b), 1 + b)),
        lambda im: ImageEnhance.Contrast(im).enhance(random.uniform(max(0, 1 - c), 1 + c)),
        lambda im: ImageEnhance.Color(im).enhance(random.uniform(max(0, 1 - sat), 1 + sat)),
        lambda im: adjust_hue(im, random.uniform(-hue, hue)),
    ]
    random.shuffle(ops)
    for op in ops:
        img = op(img)
    return img


def view(img, size, scale):
    i, j, h, w = rrc_params(img.width, img.height, scale)
    out = img.crop((j, i, j + w, i + h)).resize((size, size), Image.BILINEAR)
    if random.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    if random.random() < 0.8:
        out = color_jitter(out)
    if random.random() < 0.2:
        out = Image.merge("RGB", [out.convert("L")] * 3)
    if random.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
    arr = np.asarray(out, dtype=np.float32) / 255.0
    return ((arr - MEAN) / STD).transpose(2, 0, 1).copy()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=pathlib.Path)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    files = sorted(p for p in args.dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[: args.n]
    if not files:
        raise SystemExit(f"no JPEGs under {args.dir}")
    random.seed(args.seed)
    for p in files:  # warm the file cache
        p.read_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    for p in files:
        with Image.open(p) as im:
            img = im.convert("RGB")
        views = [view(img, size, (lo, hi)) for count, size, lo, hi in CROPS for _ in range(count)]
        assert len(views) == 8
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"Pillow {PIL.__version__} + numpy {np.__version__}: JPEG decode + 2x224+6x96 multi-crop: "
        f"{len(files)} images in {wall:.2f} s: {len(files) / wall:.1f} images/s on one core "
        f"({len(files) / cpu:.0f} images per CPU-second)"
    )


if __name__ == "__main__":
    main()
