"""The front `resbudget train --minutes N` chooses from, drawn as accuracy against the time of a whole run on the
machines named: each point's accuracy (mean over its seeds, with TTA) at its `relative_time` times the default
recipe's measured run on that machine, with the study's numbers marked. The points `--minutes` offers by default (they
hold under faint noise) form one curve per machine, the others (offered with `--clean-images`) another; the points
are named on the first machine's curves and on a GPU's.

Usage: python benchmarks/front_figure.py --machine "AMD Zen 4, 2 cores=cpu:540" --machine "one H200=cuda:2.55"
       [--out docs/figures/front]
Each --machine is LABEL=KIND:SECONDS: KIND is cpu or cuda (which ratio of front.toml applies), SECONDS the default
recipe's whole run measured on that machine (docs/RESULTS.md). A point not measured on a KIND is not drawn for it.
Writes front.png and front.json (the plotted numbers) in --out. Nothing is trained.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from resbudget.report import plot_accuracy_time
from resbudget.train.timed import load_front

# The study's reported numbers (docs/STUDY.md), 100 epochs each; their time on these machines is not known.
MARKS = {"the study's best net (2.78M params, 100 epochs)": 94.55}


def machine(text: str) -> tuple[str, str, float]:
    label, _, rest = text.rpartition("=")
    kind, _, seconds = rest.partition(":")
    try:
        value = float(seconds)
    except ValueError:
        value = float("nan")
    if not label or kind not in ("cpu", "cuda") or not value > 0:
        raise argparse.ArgumentTypeError(f"expected LABEL=cpu:SECONDS or LABEL=cuda:SECONDS, got {text!r}")
    return label, kind, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--machine", type=machine, action="append", required=True, metavar="LABEL=KIND:SECONDS")
    ap.add_argument("--out", type=Path, default=Path("docs/figures/front"))
    args = ap.parse_args()
    points = []
    for i, (label, kind, default_seconds) in enumerate(args.machine):
        for p in load_front():
            if kind in p.relative_time:
                curve = label if p.robust else f"{label}, --clean-images only"
                points.append({"curve": curve, "name": p.name, "label": p.name if i == 0 or kind == "cuda" else "",
                               "seconds": p.relative_time[kind] * default_seconds,
                               "accuracy": p.accuracy_tta, "std": p.std, "seeds": p.seeds})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "front.json").write_text(json.dumps({"machines": [list(m) for m in args.machine], "points": points,
                                                     "marks": MARKS}, indent=2) + "\n", encoding="utf-8")
    plot_accuracy_time(points, MARKS, args.out / "front.png",
                       title="train --minutes: the measured recipes, accuracy with TTA against a whole run's time",
                       legend="below")
    for p in points:
        print(f"{p['curve']:<45} {p['name']:<20} {p['seconds']:8.1f} s  {p['accuracy']:.2f} ± {p['std']:.2f}%")
    print(f"-> {args.out / 'front.png'}, {args.out / 'front.json'}")


if __name__ == "__main__":
    main()
