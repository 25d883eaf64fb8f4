#!/usr/bin/env bash
# One GPU session's measurements, side by side: `sca bench gpu` (ours) and
# bench/torch_reference.py (PyTorch, same shapes), each with a time limit so one slow case
# cannot eat the session. Builds nothing: run `cargo build --release -p sca-cli` first
# (the binary runs unchanged on the GPU machine). Results go under OUT (default ./gpu-bench):
# sca.json, torch.json and the two logs; the two tables are printed last.
#
#   bash bench/gpu_session.sh [OUT]
set -u
OUT=${1:-gpu-bench}
SCA=${SCA:-target/release/sca}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
# Ours first, cold: the first-step column then includes compilation and autotuning; the
# caches land in $OUT/cubecl so a second run (warm) can be timed from the same folder.
timeout 420 "$SCA" bench gpu --device cuda --autotune minimal --gpu-cache "$OUT/cubecl" --json "$OUT/sca.json" > "$OUT/sca.log" 2>&1
echo "sca exit $?" >> "$OUT/sca.log"
timeout 240 python3 bench/torch_reference.py --json "$OUT/torch.json" > "$OUT/torch.log" 2>&1
echo "torch exit $?" >> "$OUT/torch.log"
echo "== sca (Burn, CUDA) =="; tail -n 8 "$OUT/sca.log"
echo "== PyTorch =="; tail -n 8 "$OUT/torch.log"
