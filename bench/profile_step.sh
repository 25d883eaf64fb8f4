#!/usr/bin/env bash
# Per-kernel GPU time of the ResNet-50 SwAV step and of the feature pass, summed by kernel
# name, largest first. Two runs of `sca bench gpu --only a,c` on one cache directory: the
# first fills the compilation and tuning caches (CACHE, default OUT/cubecl: e.g. the cache
# of runs before, which makes it quick); the second runs under CubeCL's kernel profiler (a
# cubecl.toml in a directory of its own: CubeCL reads the first it finds from the working
# directory up, so one in a checkout would reach other processes), which syncs after every
# kernel and counts a kernel's first launch with its compilation, so only its timed steps
# are kept. (Profiling a cold run instead made its warm-up step 6x slower: 77 s forward, H200.)
#
#   bash bench/profile_step.sh OUT [sca bench gpu flags...]
#   e.g. SCA=target/release/sca bash bench/profile_step.sh prof --conv gemm --precision bf16
set -u
OUT=${1:-gpu-profile}
shift || true
SCA=${SCA:-target/release/sca}
LIMIT=${LIMIT:-200}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CACHE=${CACHE:-$OUT/cubecl}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
# Absolute: the profiled run starts in another directory.
case $SCA in */*) SCA=$(cd "$(dirname "$SCA")" && pwd)/$(basename "$SCA") ;; esac
t0=$SECONDS
timeout "$LIMIT" "$SCA" bench gpu --device cuda --autotune minimal --gpu-cache "$CACHE" --steps 1 \
    --only a,c "$@" > "$OUT/warm-caches.log" 2>&1
echo "caches filled: exit $? after $((SECONDS - t0)) s"
RUN_DIR=$(mktemp -d)
cat > "$RUN_DIR/cubecl.toml" <<EOF
[profiling.logger]
level = "basic"
file = "$OUT/profile.log"
[autotune.logger]
level = "minimal"
file = "$OUT/autotune.log"
EOF
touch "$OUT/profile.log"
# Each line of the run's output is prefixed with the profile log's length at that moment, so
# the kernels can be split at the phase messages. The profiler logs asynchronously; every
# phase message follows a device sync, so the split is right to within a few kernels.
(cd "$RUN_DIR" && timeout "$LIMIT" "$SCA" bench gpu --device cuda --autotune minimal --gpu-cache "$CACHE" --steps 2 \
    --only a,c --json "$OUT/run.json" "$@") 2>&1 | while IFS= read -r line; do
    echo "$(wc -l < "$OUT/profile.log") $line"
done > "$OUT/run.log"
echo "exit ${PIPESTATUS[0]}" >> "$OUT/run.log"
rm -rf "$RUN_DIR"

python3 - "$OUT" <<'PY'
import collections, re, sys
out = sys.argv[1]
marks = [l.rstrip("\n").split(" ", 1) for l in open(f"{out}/run.log") if l[:1].isdigit()]
prof = open(f"{out}/profile.log", errors="replace").read().splitlines()
unit = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}

def span(start, end):
    """Kernel name -> (total ms, count) over profile lines [start, end)."""
    acc = collections.defaultdict(lambda: [0.0, 0])
    for line in prof[start:end]:
        m = re.match(r"\|\s*([\d.]+)(ns|µs|us|ms|s)\s*\|\s*(.*)", line)
        if m:
            name = re.sub(r"\s+", " ", m.group(3))[:110]
            acc[name][0] += float(m.group(1)) * unit[m.group(2)]
            acc[name][1] += 1
    return acc

def report(title, start, end, per):
    acc = span(start, end)
    total = sum(v[0] for v in acc.values())
    print(f"\n{title}: {total / per:.1f} ms of kernel time per step, {sum(v[1] for v in acc.values()) // max(per, 1)} launches per step")
    for name, (ms, n) in sorted(acc.items(), key=lambda kv: -kv[1][0])[:25]:
        print(f"  {ms / per:9.2f} ms {100 * ms / max(total, 1e-9):5.1f} %  x{n // max(per, 1):<5} {name}")

# (a): from the end of the warm-up step (its optimiser phase) to its time per step, the
# end of its two timed steps (the two phase-timed steps after them are left out);
# (c): from the row of (a) to the row of (c) (its first batch, compilation included, is in it).
opt = next((int(n) for n, l in marks if "warm-up optimiser" in l), None)
timed = next((int(n) for n, l in marks if l.endswith(" ms/step")), None)
done = [int(n) for n, l in marks if l.startswith("done:")]
if opt is not None and timed is not None and done:
    report("(a) training step", opt, timed, 2)
    if len(done) > 1:
        report("(c) feature batch (first batch included)", done[0], done[1], 3)
else:
    print("the run ended before its timed steps; see run.log")
PY
