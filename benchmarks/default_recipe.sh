#!/usr/bin/env bash
# The default recipe (`resbudget train` with no config) on the full CIFAR-10 training set, one run per seed.
# Usage: bash benchmarks/default_recipe.sh [DATA_DIR] [SEEDS...]   (defaults: ../shared/cifar10, seeds 0 1 2)
# Each run writes runs/default-seedN/ (summary.json holds test_accuracy and wall_seconds); the last line prints
# the mean and std of the final-epoch test accuracy over the seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/cifar10}
shift || true
if [ $# -gt 0 ]; then seeds=("$@"); else seeds=(0 1 2); fi
for s in "${seeds[@]}"; do
  .venv/bin/resbudget train --data-dir "$data" --set train.seed="$s" --out "runs/default-seed$s"
done
.venv/bin/python - "${seeds[@]}" <<'PY'
import json, statistics, sys
rows = [json.load(open(f"runs/default-seed{s}/summary.json")) for s in sys.argv[1:]]
accs = [100 * r["test_accuracy"] for r in rows]
ttas = [100 * r["test_accuracy_tta"] for r in rows if r.get("test_accuracy_tta") is not None]
for s, r, a in zip(sys.argv[1:], rows, accs):
    tta = f"  ({100 * r['test_accuracy_tta']:.2f}% TTA)" if r.get("test_accuracy_tta") is not None else ""
    print(f"seed {s}: test {a:.2f}%{tta}  wall {r['wall_seconds']:.0f} s  params {r['params']:,}")
spread = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
walls = [r["wall_seconds"] for r in rows]
print(f"mean {statistics.mean(accs):.2f} ± {spread(accs):.2f}% over {len(accs)} seeds"
      + (f", {statistics.mean(ttas):.2f} ± {spread(ttas):.2f}% with TTA" if len(ttas) == len(rows) else "")
      + f"; wall {statistics.mean(walls):.0f} ± {spread(walls):.0f} s")
PY
