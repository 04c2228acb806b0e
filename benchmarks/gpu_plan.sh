#!/usr/bin/env bash
# Prepared calls for a lent GPU: one `run` call of the device tool per line below, while the machine stays warm. A
# call may name several steps (`bash benchmarks/gpu_plan.sh part speed`). The dataset travels in three parts, one per
# call, each carried as its own top-level ignored folder; the device image lacks tomli_w, which travels as a wheel in
# .whl (carry it in every call).
#
#   bash benchmarks/gpu_plan.sh prepare       # HERE, not on the device: the parts into .dd0 .dd1 .dd2, tomli_w into .whl
#   bash benchmarks/gpu_plan.sh part          # calls 1-3, carry [".ddN", ".whl", ".campaign"]: keeps the part in
#                                             # /root/parts; after the third, reassembles /root/data, checks the sums
#   bash benchmarks/gpu_plan.sh speed         # no dataset needed (fits call 1 or 2): tests/test_step.py on the GPU,
#                                             # then the default and gpu-94 on synthetic data of CIFAR-10's shapes,
#                                             # the step recorded and eager in turn: ms/step, images/s, graph/eager
#   bash benchmarks/gpu_plan.sh graph         # the recipes over 5 seeds on the real data, recorded and eager in
#                                             # turn: accuracies within the seed spread, time per step of each
#   bash benchmarks/gpu_plan.sh best          # toward 96.5% within 5M in <= 10 min (one call, <= 9 min)
#   bash benchmarks/gpu_plan.sh study100      # the study's runs at its own 100 epochs (call it again until they are
#                                             # done: it resumes them)
#   bash benchmarks/gpu_plan.sh baseline      # today's recipes over 5 seeds on this host
#
# Resuming over slots: a fresh machine loses /root. Every step writes its log and JSON under $OUT (the device tool
# brings that folder back), and the finished runs of study100 under $OUT/campaign. Before the next call, copy the
# fetched campaign folder to ./.campaign and carry it: the step starts from it and redoes only what is missing.
# Every step prints the GPU, the host CPU and the torch version first.
#
# In 15 minutes of device time (machine starts included) the three part calls must follow one another while the
# machine is warm (it goes back after a short idle wait, and /root with it): call 1 `part speed`, call 2 `part`,
# call 3 `part graph` (or `part best`); the next lent slot does the other, then study100 slot by slot.
# Run from the repository root.
set -euo pipefail
OUT=${OUT:-/tmp/out}
DATA=/root/data
mkdir -p "$OUT"
export PYTHONPATH=src
if [ "${1:-}" != prepare ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=src:/tmp/site
fi
CAMPAIGN=/root/campaign  # what earlier slots finished (carried in as .campaign), and what this one adds
mkdir -p "$CAMPAIGN"
if [ "${1:-}" != prepare ] && [ -d .campaign ]; then cp -rn .campaign/. "$CAMPAIGN/"; fi

machine() {
  python3 - <<'PY'
import torch
from resbudget.train import host_cpu
print(f"GPU {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'} | host {host_cpu()} | "
      f"torch {torch.__version__}", flush=True)
PY
}

[ $# -gt 0 ] || { sed -n '2,/^set -euo/{/^set -euo/!p}' "$0"; exit 2; }
for step in "$@"; do
case "$step" in
  prepare)
    for i in 0 1 2; do rm -rf ".dd$i"; done
    tmp=$(mktemp -d) && bash ../shared/tools/split-cifar10.sh "$tmp" 59 >/dev/null
    i=0; for f in "$tmp"/cifar10.tar.part-*; do mkdir -p ".dd$i" && mv "$f" ".dd$i/"; i=$((i + 1)); done; rm -rf "$tmp"
    rm -rf .whl && python3 -m pip download -q --no-deps --only-binary=:all: -d .whl tomli_w==1.2.0
    du -sh .dd0 .dd1 .dd2 .whl ;;
  speed)
    machine | tee "$OUT/speed.log"
    python3 -m pytest -q -p no:cacheprovider tests/test_step.py tests/test_muon.py 2>&1 | tee -a "$OUT/speed.log"
    python3 benchmarks/gpu_time_to_accuracy.py default benchmarks/recipes/gpu-94.toml --synthetic 50000 --seeds 2 \
      --step both --deadline 200 --out "$OUT/speed" 2>&1 | tee -a "$OUT/speed.log" ;;
  part)
    mkdir -p /root/parts
    for d in .dd*; do [ -d "$d" ] && cp -n "$d"/cifar10.tar.part-* /root/parts/ 2>/dev/null || true; done
    ls -l /root/parts
    if [ "$(ls /root/parts | wc -l)" -ge 3 ] && [ ! -f "$DATA/cifar-10-batches-bin/SHA256SUMS" ]; then
      mkdir -p "$DATA" && cat /root/parts/cifar10.tar.part-* | tar -x -C "$DATA"
      (cd "$DATA/cifar-10-batches-bin" && sha256sum -c SHA256SUMS)
    fi
    machine ;;
  best)
    machine | tee "$OUT/best.log"
    V='model.stage_widths=[160,384,384]'; T='train.tta="flip-shift"'
    # best (95.04% in 20 epochs) made longer, with longer augmentation and weight averaging: each point is
    # one question (does TrivialAugment pay at this length, does EMA, does length) at 3 seeds.
    python3 benchmarks/gpu_time_to_accuracy.py \
      "v40=$V;train.drop_easy=0.3;train.epochs=40;$T" \
      "v40ta=$V;train.drop_easy=0.3;train.epochs=40;data.policy=\"trivial\";$T" \
      "v80ta=$V;train.drop_easy=0.3;train.epochs=80;data.policy=\"trivial\";$T" \
      "v80ta-ema=$V;train.drop_easy=0.3;train.epochs=80;data.policy=\"trivial\";train.ema=0.999;$T" \
      "v160ta=$V;train.drop_easy=0.3;train.epochs=160;data.policy=\"trivial\";$T" \
      --data-dir "$DATA" --seeds 3 --deadline 520 --out "$OUT/best" 2>&1 | tee -a "$OUT/best.log" ;;
  study100)
    # At the study's batch of 128 a 100-epoch run is ~39,000 steps (minutes each on a launch-bound GPU), so this step
    # stops itself before the call's limit and is called again: `resbudget study` resumes every run where it stopped.
    # The runs live in $CAMPAIGN/study100 (kept while the machine stays warm, carried in as .campaign after it went
    # back). Three workers share the GPU where optuna is importable (carry its wheels in .whl), else one.
    machine | tee "$OUT/study100.log"
    timeout 480 python3 -m resbudget study paper --only shallow-plateau arch-narrow arch-deeper-plateau \
      --data-dir "$DATA" --out "$CAMPAIGN/study100" --jobs "$(python3 -c 'import optuna' 2>/dev/null && echo 3 || echo 1)" --quiet 2>&1 | tee -a "$OUT/study100.log" || true
    if [ "$(find "$CAMPAIGN/study100" -name summary.json | wc -l)" -ge 3 ]; then  # then the 5 x <1M ensemble
      timeout $((520 - SECONDS)) python3 -m resbudget ensemble train ens5-1m --data-dir "$DATA" \
        --out "$CAMPAIGN/study100/ens5-1m" --quiet --json 2>&1 | tee -a "$OUT/study100.log" || true
    fi
    python3 -m resbudget report "$CAMPAIGN/study100" --out "$OUT/study100-report" 2>&1 | tail -30 \
      | tee -a "$OUT/study100.log" || true
    # the finished runs, small files only (a finished run is skipped from its summary): the next slot's .campaign
    (cd "$CAMPAIGN" && find study100 -name summary.json -printf '%h\n' | while read -r d; do
      mkdir -p "$OUT/campaign/$d"; cp "$d"/summary.json "$d"/config.toml "$d"/metrics.* "$OUT/campaign/$d/" 2>/dev/null
    done) || true ;;
  graph)
    machine | tee "$OUT/graph.log"
    python3 benchmarks/gpu_time_to_accuracy.py default benchmarks/recipes/gpu-94.toml --data-dir "$DATA" --seeds 5 \
      --step both --deadline 400 --out "$OUT/graph" 2>&1 | tee -a "$OUT/graph.log" ;;
  baseline)
    machine | tee "$OUT/baseline.log"
    python3 benchmarks/gpu_time_to_accuracy.py default benchmarks/recipes/gpu-94.toml best \
      --data-dir "$DATA" --seeds 5 --deadline 400 --out "$OUT/baseline" 2>&1 | tee -a "$OUT/baseline.log" ;;
  *)
    sed -n '2,/^set -euo/{/^set -euo/!p}' "$0"; exit 2 ;;
esac
done
