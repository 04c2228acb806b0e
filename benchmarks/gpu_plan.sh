#!/usr/bin/env bash
# Prepared calls for a lent GPU (issues #14 and #16): one step per `run` call of the device tool, while the machine
# stays warm. The dataset travels in three parts, one per call (each carried as its own top-level ignored folder,
# made here by `../shared/tools/split-cifar10.sh .dd0 59` and moved into .dd0/.dd1/.dd2, one part file each).
#
#   bash benchmarks/gpu_plan.sh part          # calls 1-3, carry [".ddN"]: keeps the part in /root/parts; after the
#                                             # third, reassembles /root/data and checks the sha256 sums
#   bash benchmarks/gpu_plan.sh best          # issue #14: toward 96.5% within 5M in <= 10 min (one call, <= 9 min)
#   bash benchmarks/gpu_plan.sh study100      # issue #14: the study's runs at its own 100 epochs (call it again
#                                             # until they are done: it resumes them)
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
    # At the study's batch of 128 a 100-epoch run is ~39,000 steps (minutes each on a launch-bound GPU), so this step
    # stops itself before the call's limit and is called again: `resbudget study` resumes every run where it stopped.
    # The runs live in /root/study100 (kept while the machine stays warm); each call copies back what is finished.
    machine | tee "$OUT/study100.log"
    timeout 480 python3 -m resbudget study paper --only shallow-plateau arch-narrow arch-deeper-plateau \
      --data-dir "$DATA" --out /root/study100 --quiet 2>&1 | tee -a "$OUT/study100.log" || true
    if [ "$(find /root/study100 -name summary.json | wc -l)" -ge 3 ]; then  # then the 5 x <1M ensemble, resumably
      timeout $((520 - SECONDS)) python3 -m resbudget ensemble train ens5-1m --data-dir "$DATA" --out /root/study100/ens5-1m \
        --quiet --json 2>&1 | tee -a "$OUT/study100.log" || true
    fi
    python3 -m resbudget report /root/study100 --out "$OUT/study100-report" 2>&1 | tail -30 | tee -a "$OUT/study100.log" || true
    (cd /root && find study100 \( -name summary.json -o -name metrics.csv -o -name config.toml -o -name ensemble.json \) \
      -print0 | xargs -0 -r tar -czf "$OUT/study100-runs.tgz") ;;
  baseline)
    machine | tee "$OUT/baseline.log"
    python3 benchmarks/gpu_time_to_accuracy.py default benchmarks/recipes/gpu-94.toml benchmarks/recipes/gpu-95.toml \
      --data-dir "$DATA" --seeds 5 --deadline 400 --out "$OUT/baseline" 2>&1 | tee -a "$OUT/baseline.log" ;;
  *)
    sed -n 2,14p "$0"; exit 2 ;;
esac
