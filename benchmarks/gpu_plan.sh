#!/usr/bin/env bash
# Prepared calls for a lent GPU (issues #14 and #16): one step per `run` call of the device tool, while the machine
# stays warm. The dataset travels in three parts, one per call (each carried as its own top-level ignored folder,
# made here by `../shared/tools/split-cifar10.sh .dd0 59` and moved into .dd0/.dd1/.dd2, one part file each).
#
#   bash benchmarks/gpu_plan.sh part          # calls 1-3, carry [".ddN"]: keeps the part in /root/parts; after the
#                                             # third, reassembles /root/data and checks the sha256 sums
#   bash benchmarks/gpu_plan.sh best          # issue #14: toward 96.5% within 5M in <= 10 min (one call, <= 9 min)
#   bash benchmarks/gpu_plan.sh study100      # issue #14: the study's runs at its own 100 epochs (one call)
#   bash benchmarks/gpu_plan.sh baseline      # issue #16: today's recipes' times on this host, to compare with
#
# Every step writes its log and JSON under $OUT (the device tool brings that folder back) and prints the GPU, the
# host CPU and the torch version first. Run from the repository root with PYTHONPATH=src.
set -euo pipefail
OUT=${OUT:-/tmp/out}
DATA=/root/data
mkdir -p "$OUT"
export PYTHONPATH=src

machine() {
  python3 - <<'PY'
import torch
from resbudget.train import host_cpu
print(f"GPU {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'} | host {host_cpu()} | "
      f"torch {torch.__version__}", flush=True)
PY
}

case "${1:-}" in
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
    # gpu-95 (95.04% in 20 epochs) made longer, with the augmentation and averaging issue #14 lists: each point is
    # one question (does TrivialAugment pay at this length, does EMA, does length) at 3 seeds.
    python3 benchmarks/gpu_time_to_accuracy.py \
      "v40=$V;train.drop_easy=0.3;train.epochs=40;$T" \
      "v40ta=$V;train.drop_easy=0.3;train.epochs=40;data.policy=\"trivial\";$T" \
      "v80ta=$V;train.drop_easy=0.3;train.epochs=80;data.policy=\"trivial\";$T" \
      "v80ta-ema=$V;train.drop_easy=0.3;train.epochs=80;data.policy=\"trivial\";train.ema=0.999;$T" \
      "v160ta=$V;train.drop_easy=0.3;train.epochs=160;data.policy=\"trivial\";$T" \
      --data-dir "$DATA" --seeds 3 --deadline 520 --out "$OUT/best" 2>&1 | tee -a "$OUT/best.log" ;;
  study100)
    machine | tee "$OUT/study100.log"
    python3 -m resbudget study paper --only shallow-plateau arch-narrow arch-deeper-plateau --data-dir "$DATA" \
      --out "$OUT/study100" --quiet 2>&1 | tee -a "$OUT/study100.log"
    python3 -m resbudget ensemble train ens5-1m --data-dir "$DATA" --out "$OUT/study100/ens5-1m" --quiet --json \
      2>&1 | tee -a "$OUT/study100.log"
    python3 -m resbudget report "$OUT/study100" --out "$OUT/study100/report" 2>&1 | tail -30 | tee -a "$OUT/study100.log" ;;
  baseline)
    machine | tee "$OUT/baseline.log"
    python3 benchmarks/gpu_time_to_accuracy.py default benchmarks/recipes/gpu-94.toml benchmarks/recipes/gpu-95.toml \
      --data-dir "$DATA" --seeds 5 --deadline 400 --out "$OUT/baseline" 2>&1 | tee -a "$OUT/baseline.log" ;;
  *)
    sed -n 2,14p "$0"; exit 2 ;;
esac
