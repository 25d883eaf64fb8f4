#!/usr/bin/env bash
# One GPU session's measurements, side by side: `sca bench gpu` (ours) in several settings
# and bench/torch_reference.py (PyTorch, same shapes), each under a time limit so one slow
# case cannot eat the session. Builds nothing: run `cargo build --release -p sca-cli` first
# (the binary runs unchanged on the GPU machine). Everything lands under OUT (default
# ./gpu-bench): one JSON and one log per run, and the combined table, printed last.
#
#   bash bench/gpu_session.sh [OUT] [PART]
#
# PART splits the session in calls of a few minutes each (all = core and more, the default):
#   core  ours with gemm convolutions (implicit GEMM, no autotune) in f32 on (a), cold
#         (caches empty: the first step includes compilation) on the plan shipped for the
#         card (configs/conv-plans/; else the built-in kernels), with
#         NCHW activations (row `cold`) and then channels-last ones (`nhwc`); the faster of
#         the two layouts (warm ms per step) goes on: `sca bench convs` in it (every
#         ResNet-50 convolution shape × pass × candidate kernel, which writes the fastest per
#         shape as the plan in the cache) and (a) again with that plan (`plan`); then
#         PyTorch's training step (a) in fp32, TF32 and bf16. OUT/layout.txt says which
#         layout went on and why. What is left of CORE_BUDGET seconds (default 560, a
#         device call's 600 s less a margin) then goes to (b), (c), (d) and (e) in that
#         layout (row `rest`; each case's row is kept as it ends), what is left after
#         them to bench/profile_step.sh on the same caches (OUT/profile.txt, printed last),
#         and what is left then to (a) and (c) in bf16 (row `bf16`).
#   more  PyTorch's convolutions layer by layer in TF32 (bench/compare_convs.py sets them
#         against ours); bf16: convolutions (ours and PyTorch's), then (a) and (c) with the
#         plan; the add-on step (b), k-means (d) and KNN (e); PyTorch's features (c).
#   profile  bench/profile_step.sh under OUT/profile: per-kernel time of the timed steps.
#   check  `sca check-device`: four ResNet-50 training steps on the GPU and on the CPU from
#         one start, compared (losses, each weight's update, features, top-k); the GPU's
#         figures mean little where it does not compute what the CPU does. OUT/parity.json,
#         OUT/check-device.log (its table printed last), within CHECK_LIMIT seconds (default
#         300), on a cache of its own (core's first run stays cold). Run it first in a
#         fresh session. CHECK_PRECISIONS="f32 bf16 f16" checks the mixed-precision
#         convolutions too (default f32; the others write OUT/parity-P.json and
#         OUT/check-device-P.log, each within CHECK_LIMIT).
#
# PLAN=FILE starts the cache with that convolution plan (e.g. one an earlier session measured
# on the same card, configs/conv-plans/): a `more` run in a fresh session then has its plan,
# core's runs run on it instead of the built-in kernels, and core skips `sca bench convs`
# (its time goes to the other cases). `more` runs with
# channels-last activations (the default since core found them faster on an H200), NCHW
# with CHANNELS_LAST=0.
set -u
OUT=${1:-gpu-bench}
PART=${2:-all}
SCA=${SCA:-target/release/sca}
TORCH_REF=${TORCH_REF:-bench/torch_reference.py}
CACHE="$OUT/cubecl"
mkdir -p "$OUT"
if [ -n "${PLAN:-}" ]; then
    mkdir -p "$CACHE" && cp "$PLAN" "$CACHE/conv-plan.json" || { echo "PLAN=$PLAN: cannot copy it into $CACHE" >&2; exit 2; }
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

# limited LABEL LIMIT_S LOG CMD...: CMD under a time limit, its output in LOG, its exit
# status and seconds in OUT/runs.txt; returns CMD's status (124: out of time).
limited() {
    local label=$1 limit=$2 log=$3
    shift 3
    local t0=$SECONDS status
    timeout "$limit" "$@" > "$log" 2>&1
    status=$?
    echo "$label: exit $status after $((SECONDS - t0)) s" | tee -a "$OUT/runs.txt"
    return $status
}

# ours NAME LIMIT_S ARGS...: one `sca bench gpu` run, its log and JSON under OUT.
ours() {
    local name=$1 limit=$2
    shift 2
    limited "sca $name" "$limit" "$OUT/sca-$name.log" "$SCA" bench gpu --device cuda --autotune minimal \
        --gpu-cache "$CACHE" --json "$OUT/sca-$name.json" "$@"
}

# torch NAME LIMIT_S ARGS...: one bench/torch_reference.py run.
torch() {
    local name=$1 limit=$2
    shift 2
    limited "torch $name" "$limit" "$OUT/torch-$name.log" python3 "$TORCH_REF" --json "$OUT/torch-$name.json" "$@"
}

# convs NAME LIMIT_S ARGS...: `sca bench convs`, its plan into the cache (later runs use it).
# A kernel that takes the device down, or runs past 20 s (a healthy one compiled and timed in
# about a second on the H200; hung ones cost the whole limit), ends the process; the run then goes
# on with --resume (that kernel counted as refusing its shape) while its time lasts, up to
# four tries.
convs() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS try=1 left log resume=()
    while :; do
        left=$((limit - (SECONDS - t0)))
        log="$OUT/convs-$name.log"
        [ $try -gt 1 ] && log="$OUT/convs-$name.try$try.log"
        limited "convs $name (try $try)" "$left" "$log" "$SCA" bench convs --device cuda --gpu-cache "$CACHE" \
            --kernel-timeout 20 --json "$OUT/convs-$name.json" ${resume[@]+"${resume[@]}"} "$@"
        case $? in
            0 | 124) break ;; # done, or out of time
        esac
        [ $try -lt 4 ] && [ $((limit - (SECONDS - t0))) -ge 20 ] || break
        resume=(--resume)
        try=$((try + 1))
    done
    cp "$CACHE/conv-plan.json" "$OUT/conv-plan-$name.json" 2>/dev/null
}

# faster_layout NCHW_JSON NHWC_JSON: `nhwc` if the second run's warm step was faster, else
# `nchw` (also when either has no step time); the reason goes to OUT/layout.txt.
faster_layout() {
    python3 - "$1" "$2" "$OUT/layout.txt" <<'EOF'
import json, sys
def ms(path):
    try:
        rows = json.load(open(path))["rows"]
        return next(r["ms_per_step"] for r in rows if isinstance(r.get("ms_per_step"), (int, float)))
    except (OSError, ValueError, KeyError, StopIteration):
        return None
nchw, nhwc = ms(sys.argv[1]), ms(sys.argv[2])
pick = "nhwc" if nchw is not None and nhwc is not None and nhwc < nchw else "nchw"
open(sys.argv[3], "w").write(f"{pick}: warm ms per step on the same kernels, NCHW {nchw}, channels-last {nhwc}\n")
print(pick)
EOF
}

layout=(--channels-last)
[ "${CHANNELS_LAST:-1}" = 0 ] && layout=(--nchw)
if [ "$PART" = core ] || [ "$PART" = all ]; then
    ours cold 150 --only a --conv gemm --precision f32 --steps 3 --nchw
    ours nhwc 70 --only a --conv gemm --precision f32 --steps 3 --channels-last
    if [ "$(faster_layout "$OUT/sca-cold.json" "$OUT/sca-nhwc.json")" = nhwc ]; then layout=(--channels-last); else layout=(--nchw); fi
    cat "$OUT/layout.txt"
    # With a plan measured before (PLAN), its time goes to the other cases instead.
    if [ -n "${PLAN:-}" ]; then
        echo "convs f32: skipped, the plan is $PLAN" | tee -a "$OUT/runs.txt"
    else
        convs f32 200 --precision f32 --steps 3 ${layout[@]+"${layout[@]}"}
    fi
    ours plan 70 --only a --conv gemm --precision f32 --steps 5 ${layout[@]+"${layout[@]}"}
    torch train 70 --cases train
    # The limits above are ceilings: what the runs left of the call goes to the other cases
    # (with `all`, `more` runs them).
    left=$((${CORE_BUDGET:-560} - SECONDS))
    if [ "$PART" = core ] && [ "$left" -ge 60 ]; then
        ours rest "$left" --only b,c,d,e --conv gemm --precision f32 ${layout[@]+"${layout[@]}"}
    fi
    # And what they leave then to the per-kernel profile of (a) and (c) in that layout, on
    # the same caches (its first, cache-filling run is then quick).
    left=$((${CORE_BUDGET:-560} - SECONDS))
    if [ "$PART" = core ] && [ "$left" -ge 60 ]; then
        t0=$SECONDS
        SCA="$SCA" LIMIT=$(((left - 5) / 2)) CACHE="$CACHE" bash bench/profile_step.sh "$OUT/profile" --conv gemm \
            --precision f32 ${layout[@]+"${layout[@]}"} > "$OUT/profile.txt" 2>&1
        echo "profile: exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/runs.txt"
    fi
    # Then bf16 (a) and (c) in that layout (its kernels compile cold: the plan is f32's).
    left=$((${CORE_BUDGET:-560} - SECONDS))
    if [ "$PART" = core ] && [ "$left" -ge 90 ]; then
        ours bf16 "$left" --only a,c --conv gemm --precision bf16 --steps 5 ${layout[@]+"${layout[@]}"}
    fi
fi
if [ "$PART" = more ] || [ "$PART" = all ]; then
    torch convs-tf32 60 --cases convs --precisions tf32 --steps 5
    convs bf16 180 --precision bf16 --steps 3 ${layout[@]+"${layout[@]}"}
    torch convs-bf16 60 --cases convs --precisions bf16 --steps 5
    ours bf16 120 --only a,c --conv gemm --precision bf16 --steps 5 ${layout[@]+"${layout[@]}"}
    ours rest 150 --only b,d,e --conv gemm --precision f32 ${layout[@]+"${layout[@]}"}
    torch features 60 --cases features
fi

if [ "$PART" = check ]; then
    for precision in ${CHECK_PRECISIONS:-f32}; do
        suffix=""
        [ "$precision" = f32 ] || suffix="-$precision"
        limited "check-device$suffix" "${CHECK_LIMIT:-300}" "$OUT/check-device$suffix.log" "$SCA" check-device --device cuda \
            --precision "$precision" --autotune minimal --gpu-cache "$OUT/cubecl-check" --json "$OUT/parity$suffix.json"
        tail -n 20 "$OUT/check-device$suffix.log"
    done
fi

if [ "$PART" = profile ]; then
    SCA="$SCA" LIMIT=200 bash bench/profile_step.sh "$OUT/profile" --conv gemm --precision f32
fi

# Every row of every JSON written so far, in one table.
python3 - "$OUT" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
def load(path):
    """A run's JSON, or None (said) where a killed or failed run left none readable."""
    try:
        return json.load(open(path))
    except (OSError, ValueError) as e:
        print(f"{os.path.basename(path)}: unreadable ({e}); its run's log says why", file=sys.stderr)
        return None
print(f"\n{'run':<7} {'case':<66} {'images/s':>9} {'ms/step':>9} {'first s':>8}  up/fwd/bwd/opt ms (host fwd/bwd)")
for path in sorted(glob.glob(os.path.join(out, "sca-*.json"))):
    run = os.path.basename(path)[4:-5]
    doc = load(path)
    for r in (doc or {}).get("rows", []):
        f = lambda k: f"{r[k]:.1f}" if isinstance(r.get(k), (int, float)) else "-"
        phases = "/".join(f(k) for k in ("upload_ms", "forward_ms", "backward_ms", "optimiser_ms"))
        phases += " (" + "/".join(f(k) for k in ("forward_host_ms", "backward_host_ms")) + ")"
        print(f"{run:<7} {r.get('case', '?')[:66]:<66} {f('images_per_s'):>9} {f('ms_per_step'):>9} {f('first_step_s'):>8}  {phases}")
    # Shapes an explicit kernel refused ran on a fallback: slower, or tuned on a cold cache.
    for fb in (doc or {}).get("fallbacks", []):
        print(f"{run:<7}   refused: {fb['what']} -> {fb['instead']}")
for path in sorted(glob.glob(os.path.join(out, "torch*.json"))):
    doc = load(path)
    for r in doc if isinstance(doc, list) else (doc or {}).get("rows", []):
        f = lambda k: f"{r[k]:.1f}" if isinstance(r.get(k), (int, float)) else "-"
        case = f"{r.get('case', '?')} {r.get('precision', '')}"
        print(f"{'torch':<7} {case[:66]:<66} {f('images_per_s'):>9} {f('ms_per_step'):>9} {f('first_step_s'):>8}")
EOF
# The per-kernel network totals of each convolution benchmark, then ours against PyTorch's.
for log in "$OUT"/convs-*.log; do
    [ -f "$log" ] && { echo; echo "$(basename "$log"):"; sed -n '/^one network pass/,$p' "$log"; }
done
for p in f32:tf32 bf16:bf16; do
    ours_json="$OUT/convs-${p%%:*}.json" torch_json="$OUT/torch-convs-${p##*:}.json"
    if [ -f "$ours_json" ] && [ -f "$torch_json" ]; then
        python3 bench/compare_convs.py "$ours_json" "$torch_json" > "$OUT/compare-convs-${p%%:*}.txt" 2>&1
        echo; echo "ours against PyTorch, ${p%%:*} (whole table: compare-convs-${p%%:*}.txt):"
        sed -n '/^one network pass/,$p' "$OUT/compare-convs-${p%%:*}.txt"
    fi
done
[ -f "$OUT/profile.txt" ] && { echo; echo "per-kernel profile (profile/):"; cat "$OUT/profile.txt"; }
cat "$OUT/runs.txt" 2>/dev/null
