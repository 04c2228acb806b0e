"""The command line: parses arguments and calls the library; every error exits non-zero with one clear line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from . import _clock
from ._defaults import HEARTBEAT_SECONDS, SharedStorage
from ._memory import keep_freed_memory
from .models.budget import DEFAULT_BUDGET, MAX_PARAMS
from .train.config import MAX_EPOCHS, MAX_SEED
from .version import __version__

MAX_JOBS = 64  # workers one command starts on its machine


class UsageError(Exception):
    """A command line argparse cannot read: reported in one line, exit status 2, as every other error."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - argparse's
        # No abbreviated options: each option has one spelling, which the workers' command lines (--jobs) rely on
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override] - raises instead of printing the usage
        raise UsageError(f"{message} (see {self.prog} --help)")


def _number_in(low: float, high: float, kind: type = int):  # noqa: ANN202 - an argparse type
    """An argparse type: a whole number (``kind=int``) or a finite number in [low, high], else a one-line error."""
    def parse(text: str):  # noqa: ANN202
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole' if kind is int else 'a'} number, got {text!r}") \
                from None
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be between {low:,} and {high:,}, got {text}")
        return value
    return parse


SEED = _number_in(0, MAX_SEED)
SEEDS = _number_in(1, 100)  # how many seeds
HEARTBEAT = _number_in(1, 3600, float)


def cmd_presets(args: argparse.Namespace) -> int:
    from .models import build_model, count_params, get_preset, list_presets, preset_description

    rows = []
    for name in list_presets():
        rows.append({"name": name, "params": count_params(build_model(get_preset(name))),
                     "description": preset_description(name)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['params']:>11,}  {r['description']}")
    return 0


def _spec_from(arg: str, overrides: list[str]):
    from ._io import read_toml
    from .models import ModelSpec, SpecError
    from .train.config import ConfigError, load_config

    bad = [o for o in overrides if not o.split("=", 1)[0].strip().startswith(("model.", "preset"))]
    if bad:
        raise ConfigError(f"arch only takes model.* overrides, got {bad[0]!r}")
    if arg.endswith(".toml") or Path(arg).is_file():
        path = Path(arg)
        data = read_toml(path, ConfigError)
        if not {"base", "preset", "model"} & set(data):  # a bare spec file: the fields of ModelSpec
            try:
                spec = ModelSpec.from_dict(data)
            except (SpecError, TypeError) as e:
                raise ConfigError(f"{path}: {e}") from None
            return load_config({"base": "study", "model": spec.to_dict()}, overrides).model
    return load_config(arg, overrides).model


def cmd_arch(args: argparse.Namespace) -> int:
    from .models import summarize

    spec = _spec_from(args.model, args.set or [])
    summary = summarize(spec)
    if args.json:
        print(json.dumps({"spec": spec.to_dict(), **summary.to_dict(), "budget": args.budget,
                          "within_budget": summary.params <= args.budget}, indent=2))
        return 0
    print(summary.table())
    verdict = "within" if summary.params <= args.budget else "OVER"
    print(f"\n{summary.params:,} parameters: {verdict} the budget of {args.budget:,}; "
          f"{summary.macs / 1e6:,.1f} M MACs per image")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .data import download_cifar10
    from .train import load_config, train_run

    if args.resume and not args.out:
        raise ValueError("--resume needs --out RUN_DIR, the run folder to continue")
    if args.plan and args.minutes is None:
        raise ValueError("--plan shows what --minutes N would train: give --minutes")
    if args.clean_images and args.minutes is None:
        raise ValueError("--clean-images widens the recipes --minutes chooses from: give --minutes")
    if args.budget is not None and args.minutes is None:
        raise ValueError("--budget chooses among the recipes of --minutes; for a recipe of your own, set "
                         "train.budget (--set train.budget=N)")
    if args.minutes is not None:
        return train_for_minutes(args)
    config = None
    if not args.resume or args.config or args.set:
        config = load_config(args.config, args.set or [])
    if args.download:
        download_cifar10(args.data_dir)
    out = args.out
    if out is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{(config.preset if config and config.preset else 'custom')}-{stamp}"
    with _tensorboard(args, Path(out)) as hook:
        summary = train_run(config, out, data=args.data_dir, resume=args.resume,
                            allow_over_budget=args.allow_over_budget, progress=not args.quiet, on_epoch_end=hook)
    if args.json:
        print(json.dumps({k: v for k, v in summary.to_dict().items() if k != "config"}, indent=2))
    return 0


@contextlib.contextmanager
def _tensorboard(args: argparse.Namespace, out: Path) -> Iterator[Callable[[int, dict], None] | None]:
    """The ``--tensorboard`` hook of a run (None without it), closed when the run ends."""
    if args.tensorboard is None:
        yield None
        return
    from .train.tensorboard import TensorBoardLog

    log = TensorBoardLog(args.tensorboard, out.name)
    try:
        yield log
    finally:
        log.close()


def train_for_minutes(args: argparse.Namespace) -> int:
    from .data import download_cifar10
    from .data.load import count_training_images
    from .train import train_run
    from .train.deadline import TimeLimit
    from .train.folder import check_new_run_folder
    from .train.timed import TimeBudgetError, format_plan, plan

    if args.config or args.resume:
        raise ValueError("--minutes chooses the recipe for the time: give no recipe, and start a new run (a run "
                         "cut short is not resumed under a time limit)")
    out = args.out or Path("runs") / f"minutes{args.minutes:g}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if not args.plan:
        check_new_run_folder(Path(out))  # before the speed probe, which takes a while
    if args.download and not args.plan:
        download_cifar10(args.data_dir)
    try:
        config, record = plan(args.minutes, budget=args.budget, overrides=tuple(args.set or []),
                              elapsed=time.perf_counter() - args.started,
                              train_images=count_training_images(args.data_dir), clean_images=args.clean_images)
    except TimeBudgetError as e:
        if args.plan and e.record is not None:  # the table that shows why, then the one-line error
            print(format_plan(e.record))
        raise
    if args.plan:
        print(format_plan(record))
        return 0
    if not args.quiet:
        epochs = f"{record['epochs']} epoch{'s' if record['epochs'] != 1 else ''}"
        print(f"--minutes {args.minutes:g}: {record['chosen']}, {epochs}, {record['params']:,} "
              f"params: {record['why']}; expected {record['expected_accuracy']}", flush=True)
    with _tensorboard(args, Path(out)) as hook:
        summary = train_run(config, out, data=args.data_dir, allow_over_budget=args.allow_over_budget,
                            progress=not args.quiet, on_epoch_end=hook,
                            time_limit=TimeLimit(args.minutes * 60, args.started, record))
    if args.json:
        print(json.dumps({k: v for k, v in summary.to_dict().items() if k != "config"}, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .ensemble import is_ensemble, load_ensemble
    from .train import evaluate_checkpoint
    from .train.evaluate import CorruptionTest

    limits = dict(budget=args.budget, allow_over_budget=args.allow_over_budget)
    figure = None
    if args.figure:
        from .report import figure_path

        figure = figure_path(args.figure)  # checked before the evaluation, which takes a while
    model = load_ensemble(args.checkpoint, **limits) if is_ensemble(args.checkpoint) else None
    data = args.data_dir
    if figure is not None:  # loaded once: evaluated, then the mistakes drawn from it
        from .train.evaluate import checkpoint_data

        data = checkpoint_data(args.checkpoint, args.data_dir, ensemble=model is not None,
                               allow_unfinished=args.allow_unfinished)
    result = evaluate_checkpoint(args.checkpoint, data=data, device=args.device, precision=args.precision,
                                 model=model, budget=None if args.allow_over_budget else args.budget,
                                 allow_unfinished=args.allow_unfinished,
                                 corruptions=CorruptionTest(args.images, args.seed) if args.corruptions else None)
    if figure is not None:
        from .report import plot_evaluation

        written = plot_evaluation(result, data.test.images.numpy(), figure, str(args.checkpoint))
        print(f"reliability, confusion and mistakes written to {written}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['checkpoint']}: test accuracy {100 * result['test_accuracy']:.2f}%  "
          f"loss {result['test_loss']:.4f}  ({result['params']:,} params, {result['images']:,} images)")
    for note in result["notes"]:
        print(f"note: {note}")
    if result.get("test_accuracy_tta") is not None:
        print(f"with {result['tta']} TTA ({result['views']} views): {100 * result['test_accuracy_tta']:.2f}%")
    print(format_classes(result["per_class"], result["confusion"]))
    if "calibration" in result:
        c = result["calibration"]
        print(f"probabilities over {c['views']} view(s): test NLL {c['test_nll']:.4f}, ECE (15 bins) "
              f"{c['test_ece']:.4f}"
              + (f"; with its temperature {c['temperature']:.4f}: NLL {c['test_nll_calibrated']:.4f}, ECE "
                 f"{c['test_ece_calibrated']:.4f}" if c["temperature"] != 1.0 else " (no temperature fitted)"))
        print("accuracy on the most confident " + ", ".join(f"{100 * float(k):.0f}%: {100 * v:.2f}%" for k, v in
                                                            c["accuracy_at_coverage"].items()))
    if "robustness" in result:
        r = result["robustness"]
        print(f"\ncorruptions of the first {r['images']:,} test images (seed {r['seed']}); clean "
              f"{100 * r['clean']:.2f}%, mean over all {100 * r['mean']:.2f}%")
        print(f"{'corruption':<16}" + "".join(f"{f'sev {s}':>9}" for s in range(1, 6)))
        for name, accs in r["corruptions"].items():
            print(f"{name:<16}" + "".join(f"{100 * a:8.2f}%" for a in accs))
    return 0


def format_classes(per_class: list[dict], confusion: list[list[int]]) -> str:
    """``eval``'s per-class accuracy and confusion matrix (rows: the true class; columns: the predicted one) as a
    table a user reads."""
    short = [c["class"][:5] for c in per_class]
    width = max(len(c["class"]) for c in per_class)
    lines = ["\nper class, the image alone (rows: the true class; columns: the predicted one)",
             f"  {'':<{width}} " + " ".join(f"{s:>5}" for s in short) + "   accuracy"]
    for c, row in zip(per_class, confusion):
        accuracy = f"{100 * c['accuracy']:6.2f}%" if c["accuracy"] is not None else "     -"
        lines.append(f"  {c['class']:<{width}} " + " ".join(f"{v:>5}" for v in row) + f"   {accuracy}")
    return "\n".join(lines)


def cmd_predict(args: argparse.Namespace) -> int:
    from .deploy import IMAGE_METHOD, load_predictor, predict_files

    if args.csv is not None and args.csv != "-" and (Path(args.csv).exists() or not Path(args.csv).parent.is_dir()):
        raise ValueError(f"--csv {args.csv}: the file exists (it is not overwritten) or its folder does not")
    predictor = load_predictor(args.model, budget=args.budget, allow_over_budget=args.allow_over_budget,
                               allow_unfinished=args.allow_unfinished, views=args.views)
    results, said_resized, failed, predicted = [], False, 0, 0
    for r in predict_files(predictor, args.images, top_k=args.top_k, min_confidence=args.min_confidence):
        if "error" in r:
            failed += 1
            print(f"resbudget predict: error: {r['error']}", file=sys.stderr)
            continue
        predicted += 1
        if args.json or args.csv is not None:
            results.append(r)
        else:
            if r["resized"] and not said_resized:
                size = predictor.image_size
                print(f"note: images not {size}x{size} are read as {IMAGE_METHOD}", file=sys.stderr)
                said_resized = True
            top = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top"])
            print(f"{r['file']}: {top}" + ("  (unsure)" if r["unsure"] else ""))
    if args.csv is not None:
        _write_csv(args.csv, [(r["file"], r["top"][0]["class"]) for r in results])
    elif args.json:
        print(json.dumps({"method": IMAGE_METHOD, "tta": predictor.tta, "temperature": predictor.temperature,
                          "predictions": results, "errors": failed}, indent=2))
    return 0 if not failed else 1 if predicted else 2  # 1: some images predicted, 2: none


def _write_csv(target: str, rows: list[tuple[str, str]]) -> None:
    """``file,class`` and one line per image, to stdout (``-``) or a new file written whole."""
    import csv
    import io

    from ._io import write_text

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("file", "class"))
    writer.writerows(rows)
    if target == "-":
        sys.stdout.write(text.getvalue())
    else:
        write_text(Path(target), text.getvalue())
        print(f"{len(rows)} prediction(s) written to {target}", file=sys.stderr)


def cmd_export(args: argparse.Namespace) -> int:
    from .deploy import export_onnx

    path = export_onnx(args.run, args.out, opset=args.opset, budget=args.budget, views=args.views,
                       allow_over_budget=args.allow_over_budget, allow_unfinished=args.allow_unfinished)
    print(f"ONNX model written to {path} (input: float32 N x 3 x S x S RGB in 0-1, S and the class names in its "
          "metadata; outputs: logits, probabilities over the TTA views named there)")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .train import calibrate_run

    r = calibrate_run(args.run, data=args.data_dir, device=args.device, allow_unfinished=args.allow_unfinished,
                      temperature=args.temperature)
    if args.json:
        print(json.dumps(r, indent=2))
    elif "val_images" in r:
        print(f"{args.run}: temperature {r['temperature']:.4f} fitted on {r['val_images']:,} validation images; "
              f"validation NLL {r['val_nll']:.4f} -> {r['val_nll_calibrated']:.4f}, ECE {r['val_ece']:.4f} -> "
              f"{r['val_ece_calibrated']:.4f}")
    else:
        print(f"{args.run}: temperature {r['temperature']:g} stored (eval shows what it does to the probabilities)")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from .study import run_study

    out = args.out or Path("runs") / f"study-{Path(args.study).name}" / (f"e{args.epochs}" if args.epochs else "full")
    if args.storage or args.jobs > 1:
        _need_search_extra()
    storage = args.storage
    if args.jobs > 1 and storage is None:  # the workers of this machine share a queue in the study's folder
        from .search import default_storage

        out.mkdir(parents=True, exist_ok=True)
        storage = default_storage(out, "queue.db")
    with _other_workers(args, storage, out / "workers"):
        runs = run_study(args.study, out, only=args.only or (), epochs=args.epochs, seeds=args.seeds,
                         data=args.data_dir, storage=SharedStorage(storage, args.heartbeat) if storage else None,
                         progress=not args.quiet)
    width = max(len(r.experiment) for r in runs)
    print(f"{'experiment':<{width}}  seed  epochs  test acc  paper")
    for r in runs:
        s = r.summary
        paper = ", ".join(f"{a:g}" for a in s.config["experiment"]["paper_accuracy"]) or "-"
        flag = "  (plateau watched test)" if s.plateau_watched_test else ""
        accuracy = "diverged" if s.diverged else f"{100 * s.test_accuracy:7.2f}%"
        print(f"{r.experiment:<{width}}  {r.seed:>4}  {s.epochs:>6}  {accuracy:>8}  {paper}{flag}")
    print(f"runs in {out}")
    return 0


def parse_count(text: str) -> int:
    """A count such as ``5000000``, ``5_000_000``, ``5M``, ``2.5M`` or ``500k`` (for budgets)."""
    raw = text.strip().replace("_", "").replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(raw[-1:].lower(), 1)
    try:
        value = float(raw[:-1] if scale > 1 else raw) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (e.g. 5000000, 5M, 500k)") from None
    if not 1 <= value <= 1e15:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive count")
    return round(value)


@contextlib.contextmanager
def _other_workers(args: argparse.Namespace, storage: str | None, log_dir: Path) -> Iterator[None]:
    """With ``--jobs N``: N-1 more workers of this command on this machine, sharing ``storage``, for the block's
    duration (this process being the N-th); they are waited for after it, and stopped if it fails."""
    if args.jobs <= 1:
        yield
        return
    import torch

    from .search.workers import Workers, threads_each, worker_argv

    workers = Workers(worker_argv(args.argv, storage), args.jobs, log_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads_each(args.jobs))
    print(f"{args.jobs} workers on this machine, sharing {storage}; the others' output is in {log_dir}",
          file=sys.stderr, flush=True)
    try:
        yield
    except BaseException:
        workers.stop()
        raise
    finally:
        torch.set_num_threads(threads)  # this process's own share only while its workers run
    workers.wait(lambda text: print(f"resbudget {args.command}: warning: {text}", file=sys.stderr, flush=True))


def _need_search_extra() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ValueError("search needs the search extra: pip install -e '.[search]' (optuna; add '.[postgres]' for a "
                         "PostgreSQL storage)") from None


def _search_folder(args: argparse.Namespace) -> Path:
    return args.out or Path("runs") / "search" / args.name


def _search_storage(args: argparse.Namespace) -> str:
    """The storage of an existing search: --storage, or the SQLite file of its folder, which must be there."""
    from .search import SearchError, default_storage

    if args.storage:
        return args.storage
    folder = _search_folder(args)
    if not (folder / "search.db").is_file():
        raise SearchError(f"no search {args.name!r} at {folder} (no search.db there); pass --out DIR or --storage URL "
                          "where it runs")
    return default_storage(folder)


def cmd_search(args: argparse.Namespace) -> int:
    _need_search_extra()
    from .search import SearchSettings, load_space, run_search
    from .search.engine import trained

    given = {k: getattr(args, k) for k in ("budget", "macs_budget", "trial_minutes", "space", "seed", "val_size")
             if getattr(args, k) is not None} | ({"fill": True} if args.fill else {})
    settings = None
    if given:  # creating the search, or checking a worker's options against the stored ones (unset: the defaults)
        minutes, space = given.pop("trial_minutes", None), given.pop("space", None)
        settings = SearchSettings(space=load_space(space), **given,
                                  **({"trial_seconds": 60 * minutes} if minutes is not None else {}))
    folder = _search_folder(args)
    storage = args.storage
    if args.jobs > 1 and storage is None:
        from .search import default_storage

        folder.mkdir(parents=True, exist_ok=True)
        storage = default_storage(folder)
    if args.jobs > 1 and settings is not None:  # create the search before the other workers open it
        from .search.engine import open_search, open_storage

        open_search(args.name, open_storage(storage, args.heartbeat), settings)
    with _other_workers(args, storage, folder / "workers"):
        study = run_search(args.name, trials=args.trials, out_dir=folder, storage=storage,
                           settings=settings, data=args.data_dir, heartbeat=args.heartbeat)
    print(f"search {args.name!r}: {sum(trained(t) for t in study.trials)} trials trained; `resbudget search report "
          f"{args.name}` shows them")
    return 0


def cmd_search_report(args: argparse.Namespace) -> int:
    _need_search_extra()
    from .search import format_table, open_search, open_storage, search_report

    study, settings = open_search(args.name, open_storage(_search_storage(args)), None, create=False)
    r = search_report(study, args.report_dir or _search_folder(args) / "report")
    print(f"search {args.name!r}: {settings.describe()}")
    print(format_table(r["rows"]))
    if r["importances"]:
        print("parameter importances: " + ", ".join(f"{k} {v:.2f}" for k, v in r["importances"].items()))
    if r["best"] is not None:
        print(f"best: trial {r['best']} -> {r['files']['best']} (resbudget train {r['files']['best']})")
    print("files: " + ", ".join(v for k, v in r["files"].items() if k != "best"))
    return 0


def cmd_search_confirm(args: argparse.Namespace) -> int:
    _need_search_extra()
    from .search import confirm_search, open_search, open_storage

    study, _ = open_search(args.name, open_storage(_search_storage(args)), None, create=False)
    confirm_search(study, args.confirm_dir or _search_folder(args) / "confirm", top=args.top, seeds=args.seeds,
                   with_base=args.with_base, data=args.data_dir)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    path = build_report(args.runs, args.out, title=args.title, figures=not args.no_figures)
    print(path.read_text(encoding="utf-8") if args.print else f"report written to {path}")
    return 0


def cmd_page(args: argparse.Namespace) -> int:
    from .report.page import page
    from .train.evaluate import CorruptionTest

    if args.out is not None and args.out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out {args.out}: a page is an .html file")
    path = page(args.source, args.out, data=args.data_dir, device=args.device,
                corruptions=CorruptionTest(args.images) if args.corruptions else None)
    print(f"page written to {path}")
    return 0


def cmd_ensemble_train(args: argparse.Namespace) -> int:
    from .ensemble import train_ensemble, widest_member
    from .models.presets import ENSEMBLE_MEMBERS
    from .train import ConfigError, load_config

    config = load_config(args.config, args.set or [])
    if args.members is None:
        if args.config not in ENSEMBLE_MEMBERS:
            raise ConfigError(f"--members K is needed (only the ensemble presets {', '.join(ENSEMBLE_MEMBERS)} "
                              "have a default)")
        args.members = ENSEMBLE_MEMBERS[args.config]
    if args.widest:
        config = dataclasses.replace(config, model=widest_member(config.model, args.budget // args.members))
    out = args.out or Path("runs") / f"ens{args.members}-{config.preset or 'custom'}"
    r = train_ensemble(config, out, members=args.members, budget=args.budget, seeds=args.seeds,
                       data=args.data_dir, progress=not args.quiet)
    print(json.dumps({k: v for k, v in r.items() if k != "pairwise_disagreement"}, indent=2) if args.json else
          f"ensemble of {len(r['members'])} ({r['params']:,} params): mean softmax "
          f"{100 * r['rules']['mean_softmax']:.2f}%, vote {100 * r['rules']['majority_vote']:.2f}%, best member "
          f"{100 * max(r['members']):.2f}% -> {out}")
    return 0


def cmd_ensemble_eval(args: argparse.Namespace) -> int:
    from .ensemble import evaluate_ensemble

    r = evaluate_ensemble(args.folder, data=args.data_dir, device=args.device, precision=args.precision,
                          budget=args.budget, allow_over_budget=args.allow_over_budget)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{args.folder}: {len(r['members'])} members, {r['params']:,} params in all, {r['images']:,} test images")
    for i, (acc, n) in enumerate(zip(r["members"], r["member_params"])):
        print(f"  member {i}: {100 * acc:6.2f}%  ({n:,} params)")
    for rule, acc in r["rules"].items():
        print(f"  {rule:<14} {100 * acc:6.2f}%")
    print(f"  {'oracle':<14} {100 * r['oracle']:6.2f}%   (any member right)")
    print(f"  mean pairwise disagreement {100 * r['mean_disagreement']:.2f}%")
    return 0


def _add_unfinished_flag(s: argparse.ArgumentParser) -> None:
    s.add_argument("--allow-unfinished", action="store_true", help="use the weights of a run folder whose run has "
                   "not finished (killed or still training), which are an earlier epoch's")


def _add_budget_flags(s: argparse.ArgumentParser, budget_help: str) -> None:
    s.add_argument("--budget", type=_number_in(1, MAX_PARAMS), default=DEFAULT_BUDGET,
                   help=f"parameter budget (default {DEFAULT_BUDGET:,}): {budget_help}")
    s.add_argument("--allow-over-budget", action="store_true",
                   help="load nets above --budget (a hard ceiling on size still holds)")


def _add_eval_flags(s: argparse.ArgumentParser, budget_help: str, func) -> None:  # noqa: ANN001
    _add_budget_flags(s, budget_help)
    s.add_argument("--data-dir", metavar="DIR")
    s.add_argument("--device", default="auto")
    s.add_argument("--precision", choices=("fp32", "bf16"), help="default: the precision the run trained and was "
                   "scored in (bf16 in every recipe), so its own numbers are reproduced")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="resbudget", description="ResNets for CIFAR-10 under a parameter budget.")
    p.add_argument("--version", action="version", version=f"resbudget {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("presets", help="list the named architectures")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_presets)

    s = sub.add_parser("arch", help="per-layer summary of a preset or spec: shapes, parameters, MACs, warnings")
    s.add_argument("model", metavar="PRESET|SPEC.toml")
    s.add_argument("--set", action="append", metavar="model.KEY=VALUE", help="change a spec field")
    s.add_argument("--budget", type=_number_in(1, MAX_PARAMS), default=DEFAULT_BUDGET)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_arch)

    s = sub.add_parser("train", help="train a preset or config on CIFAR-10 (no argument: the default recipe; best: "
                       "the most accurate recipe measured for this machine)")
    s.add_argument("config", nargs="?", metavar="PRESET|BASE|CONFIG.toml",
                   help="a preset (that net under the study's recipe), a named recipe (default, best, no-noise, "
                   "study) or a config file")
    s.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one config value")
    s.add_argument("--out", type=Path, metavar="DIR", help="run folder (default runs/NAME-TIMESTAMP)")
    s.add_argument("--data-dir", metavar="DIR", help="CIFAR-10 folder or archive (default $RESBUDGET_DATA_DIR)")
    s.add_argument("--download", action="store_true", help="fetch the official archive if it is not there")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    s.add_argument("--allow-over-budget", action="store_true", help="train a model above train.budget")
    s.add_argument("--minutes", type=_number_in(0.1, 100_000, float), metavar="N",
                   help="the whole run ends within N minutes: the most accurate measured recipe this machine can "
                   "train in that time is chosen (give no recipe)")
    s.add_argument("--budget", type=parse_count, metavar="PARAMS",
                   help="with --minutes: only recipes with at most PARAMS parameters")
    s.add_argument("--clean-images", action="store_true",
                   help="with --minutes: the images will be clean, so also choose recipes trained for clean images "
                   "only, which lose most of their accuracy under faint pixel noise")
    s.add_argument("--plan", action="store_true",
                   help="with --minutes: print each recipe's predicted time here and the choice; train nothing")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.add_argument("--json", action="store_true", help="print the summary as JSON at the end")
    s.add_argument("--tensorboard", type=Path, metavar="DIR", help="also write each epoch's metrics as TensorBoard "
                   "scalars under DIR/RUN_NAME (the tensorboard extra)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("study", help="run a study's experiments (e.g. paper), resumably, optionally at fewer epochs")
    s.add_argument("study", metavar="NAME|DIR", help="a folder of experiment configs, or its name under experiments/")
    s.add_argument("--only", nargs="+", metavar="NAME", help="run only these experiments")
    s.add_argument("--epochs", type=_number_in(1, MAX_EPOCHS),
                   help="scale every schedule to this many epochs (default: as written)")
    s.add_argument("--seeds", type=SEEDS, default=1, help="seeds 0..N-1 per experiment (default 1)")
    s.add_argument("--out", type=Path, metavar="DIR", help="default runs/study-NAME/eE (or full)")
    s.add_argument("--data-dir", metavar="DIR")
    s.add_argument("--storage", metavar="URL", help="share the runs with every worker started with the same options "
                   "and storage (SQLAlchemy URL, e.g. postgresql+psycopg://USER@HOST/DB)")
    s.add_argument("--heartbeat", type=HEARTBEAT, default=HEARTBEAT_SECONDS, metavar="S",
                   help="with --storage: a worker "
                   f"silent for 3 beats has its run given to another (default {HEARTBEAT_SECONDS:g} s)")
    s.add_argument("--jobs", type=_number_in(1, MAX_JOBS), default=1, metavar="N",
                   help="N workers on this machine sharing the runs (e.g. small nets on one large GPU; default 1)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_study)

    s = sub.add_parser("search", help="search nets and recipes under a budget (Optuna); also: search report NAME, "
                       "search confirm NAME")
    s.add_argument("name", metavar="NAME", help="the search's name in its storage")
    s.add_argument("--trials", type=_number_in(1, 10_000), default=15,
                   help="trained trials in all, over every worker (default 15)")
    s.add_argument("--budget", type=parse_count, help="parameter budget, e.g. 5M (default 5M)")
    s.add_argument("--macs-budget", type=parse_count, metavar="M", help="MACs per image, e.g. 300M (default: none)")
    s.add_argument("--trial-minutes", type=_number_in(0.01, 7 * 24 * 60, float), metavar="T",
                   help="stop a trial that runs past T minutes; the "
                   "objective is then accuracy in that time (default: no limit)")
    s.add_argument("--space", metavar="FILE", help="a TOML file that fixes or narrows the default space")
    s.add_argument("--seed", type=SEED, help="the sampler's and the trials' seed (default 0)")
    s.add_argument("--val-size", type=_number_in(100, 49_000), metavar="N", help="held-out training images that "
                   "score trials (default 5,000)")
    s.add_argument("--fill", action="store_true", help="scale each drawn net's widths up to fill the budget")
    s.add_argument("--storage", metavar="URL", help="SQLAlchemy URL shared by the workers (default: an SQLite file "
                   "in the search folder); postgresql+psycopg://USER@HOST/DB for several machines")
    s.add_argument("--heartbeat", type=HEARTBEAT, default=HEARTBEAT_SECONDS, metavar="S", help="a worker silent for 3 "
                   f"beats has its trial retried (default {HEARTBEAT_SECONDS:g} s)")
    s.add_argument("--out", type=Path, metavar="DIR", help="search folder (default runs/search/NAME)")
    s.add_argument("--data-dir", metavar="DIR")
    s.add_argument("--jobs", type=_number_in(1, MAX_JOBS), default=1, metavar="N",
                   help="N workers on this machine drawing the trials (default 1)")
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("search report", prog="resbudget search report")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--storage", metavar="URL")
    s.add_argument("--out", type=Path, metavar="DIR", help="search folder (default runs/search/NAME)")
    s.add_argument("--report-dir", type=Path, metavar="DIR", help="default SEARCH_FOLDER/report")
    s.set_defaults(func=cmd_search_report)

    s = sub.add_parser("search confirm", prog="resbudget search confirm")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--top", type=_number_in(1, 1000), default=1, metavar="K", help="the K best trials (default 1)")
    s.add_argument("--seeds", type=SEEDS, default=3, help="seeds 0..N-1 each (default 3)")
    s.add_argument("--with-base", action="store_true", help="also the search's base recipe, for comparison")
    s.add_argument("--storage", metavar="URL")
    s.add_argument("--out", type=Path, metavar="DIR", help="search folder (default runs/search/NAME)")
    s.add_argument("--confirm-dir", type=Path, metavar="DIR", help="default SEARCH_FOLDER/confirm")
    s.add_argument("--data-dir", metavar="DIR")
    s.set_defaults(func=cmd_search_confirm)

    s = sub.add_parser("report", help="Markdown/CSV tables and PNG figures from run folders")
    s.add_argument("runs", nargs="+", metavar="RUNS_DIR", help="folders searched for finished runs")
    s.add_argument("--out", type=Path, default=Path("report"), metavar="DIR", help="default ./report")
    s.add_argument("--title", default="resbudget report")
    s.add_argument("--no-figures", action="store_true", help="tables only")
    s.add_argument("--print", action="store_true", help="print report.md when done")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("page", help="one self-contained HTML page of a run (or of a folder of runs): the net, the "
                       "recipe, curves, accuracy, calibration, classes, mistakes, machine")
    s.add_argument("source", metavar="RUN_DIR|RUNS_DIR")
    s.add_argument("--out", type=Path, metavar="FILE.html", help="default: page.html in the folder")
    s.add_argument("--data-dir", metavar="DIR", help="the data to evaluate a run on (default $RESBUDGET_DATA_DIR)")
    s.add_argument("--device", default="auto")
    s.add_argument("--corruptions", action="store_true", help="add the accuracy under 8 corruptions (--images)")
    s.add_argument("--images", type=_number_in(1, 10_000), default=2000, metavar="N")
    s.set_defaults(func=cmd_page)

    ens = sub.add_parser("ensemble", help="ensembles of several members under one budget")
    ens_sub = ens.add_subparsers(dest="ensemble_command", required=True)
    s = ens_sub.add_parser("train", help="train K members of one preset or config under one budget")
    s.add_argument("config", nargs="?", metavar="PRESET|CONFIG.toml")
    s.add_argument("--members", type=_number_in(1, 100), metavar="K",
                   help="how many (default 5 for ens5-1m, 10 for ens10-500k)")
    s.add_argument("--budget", type=_number_in(1, MAX_PARAMS), default=DEFAULT_BUDGET,
                   help="for all members together (each gets budget/K)")
    s.add_argument("--widest", action="store_true", help="scale the model's widths to the widest that fits budget/K")
    s.add_argument("--seeds", type=SEED, nargs="+", help="one per member (default: train.seed, +1, +2, ...)")
    s.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    s.add_argument("--out", type=Path, metavar="DIR", help="default runs/ensK-PRESET")
    s.add_argument("--data-dir", metavar="DIR")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_ensemble_train)

    s = ens_sub.add_parser("eval", help="each member, each combination rule, the oracle and the disagreement")
    s.add_argument("folder", metavar="DIR", help="an ensemble folder (ensemble.json + memberN.safetensors)")
    _add_eval_flags(s, "for all members together (each within budget/K)", cmd_ensemble_eval)

    s = sub.add_parser("predict", help="classify image files (any size and format Pillow reads)")
    s.add_argument("model", metavar="RUN_DIR|CHECKPOINT|ENSEMBLE_DIR")
    s.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    s.add_argument("--top-k", type=int, default=1, metavar="K", help="the K most probable classes (default 1)")
    s.add_argument("--views", type=int, choices=(1, 2, 4, 6), help="TTA views to average (default: the run's own, "
                   "so the probabilities are those eval and the run's summary score; 1: the image alone)")
    s.add_argument("--min-confidence", type=_number_in(0, 1, float), default=0.0, metavar="P",
                   help="mark as unsure each image whose top probability is below P (eval shows the accuracy at "
                   "each coverage)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--csv", metavar="FILE", help="write file,class and one line per image (the most probable class) "
                   "to FILE, a new file (- for stdout): what a competition or a spreadsheet takes")
    _add_budget_flags(s, "a net above it is refused")
    _add_unfinished_flag(s)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("export", help="write a run's net as an ONNX model (normalisation, TTA views and "
                       "temperature inside)")
    s.add_argument("run", metavar="RUN_DIR|CHECKPOINT")
    s.add_argument("--format", choices=("onnx",), default="onnx")
    s.add_argument("--out", type=Path, metavar="FILE", help="default: model.onnx beside the weights")
    s.add_argument("--opset", type=int, help="the ONNX opset to write (default 18, the exporter's own)")
    s.add_argument("--views", type=int, choices=(1, 2, 4, 6), help="TTA views the graph averages (default: the "
                   "run's own, as predict and eval score; 1: the image alone, the fastest)")
    _add_budget_flags(s, "a net above it is refused")
    _add_unfinished_flag(s)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("calibrate", help="fit a run's temperature on its own validation split, or store a given one")
    s.add_argument("run", metavar="RUN_DIR")
    s.add_argument("--temperature", type=float, metavar="T", help="store T instead of fitting one (e.g. the "
                   "recipe's train.temperature, for a run trained before its recipe had one)")
    s.add_argument("--data-dir", metavar="DIR")
    s.add_argument("--device", default="auto")
    s.add_argument("--json", action="store_true")
    _add_unfinished_flag(s)
    s.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("eval", help="test accuracy of a run folder, checkpoint or ensemble folder")
    s.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT|ENSEMBLE_DIR")
    s.add_argument("--corruptions", action="store_true",
                   help="also the accuracy under 8 common corruptions at 5 severities (noise, blur, contrast, ...)")
    s.add_argument("--images", type=_number_in(1, 10_000), default=2000, metavar="N",
                   help="with --corruptions: the first N test images (default 2,000)")
    s.add_argument("--seed", type=SEED, default=0, help="with --corruptions: the seed of the random corruptions")
    s.add_argument("--figure", type=Path, metavar="FILE.png", help="draw the reliability diagram (confidence "
                   "against accuracy per bin), the confusion matrix and the most confident mistakes in this PNG")
    _add_eval_flags(s, "a checkpoint (or an ensemble's members together) above it is refused", cmd_eval)
    _add_unfinished_flag(s)
    return p


def main(argv: list[str] | None = None) -> int:
    from .data import DataError
    from .models import BudgetError, SpecError, UnknownPresetError
    from .report import ReportError
    from .study import StudyError
    from .train import CheckpointError, ConfigError, RunFolderError, TrainingError

    # the command's start: the process's own (its imports included) when it is the command line's, else this call
    started = _clock.STARTED if argv is None else time.perf_counter()
    if argv is None:  # a process of its own: its allocator is ours to set (a caller's process is left as it is)
        keep_freed_memory()
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "search" and argv[1] in ("report", "confirm"):
        argv = [f"search {argv[1]}", *argv[2:]]  # two-word commands, parsed as one
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"resbudget: error: {e}", file=sys.stderr)
        return 2
    args.started, args.argv = started, argv
    try:
        return args.func(args)
    except (DataError, BudgetError, SpecError, UnknownPresetError, ConfigError, CheckpointError, RunFolderError,
            TrainingError, StudyError, ReportError, ValueError, OSError) as e:
        message = " ".join(str(e).split("\n"))  # one line, whatever the message holds
        print(f"resbudget {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resbudget {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
