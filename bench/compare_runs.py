#!/usr/bin/env python3
"""Loss terms and KNN accuracy of several runs on one figure, from their metrics.jsonl.

  python3 bench/compare_runs.py runs/a runs/b [--labels f32 bf16] --out compare.png

Needs matplotlib (pip install matplotlib). Used for docs/precision_curves.png.
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TERMS = [("loss_ssl", "SSL loss"), ("loss_mu", "attention MSE"), ("loss_cls", "cluster CE")]


def read(run):
    steps, epochs = [], []
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "batch" in r and "loss" in r:
                steps.append(r)
            elif "knn_top1" in r:
                epochs.append(r)
    return steps, epochs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--labels", nargs="+")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    labels = a.labels or [os.path.basename(os.path.normpath(r)) for r in a.runs]
    fig, axes = plt.subplots(1, len(TERMS) + 1, figsize=(4 * (len(TERMS) + 1), 3.2))
    for run, label in zip(a.runs, labels):
        steps, epochs = read(run)
        for ax, (key, title) in zip(axes, TERMS):
            pts = [(s["step"], s[key]) for s in steps if key in s]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label)
            ax.set_title(title)
            ax.set_xlabel("step")
        axes[-1].plot([e["epoch"] for e in epochs], [e["knn_top1"] for e in epochs], marker="o", label=label)
    axes[-1].set_title("KNN top-1 (%)")
    axes[-1].set_xlabel("epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)


if __name__ == "__main__":
    main()
