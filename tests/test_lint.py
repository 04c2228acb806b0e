"""The tree as a reader meets it: ruff's checks (pyproject.toml), and documents that speak to users."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_tree_passes_ruff():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff comes with the test extra: pip install -e '.[test]'"
    result = subprocess.run([ruff, "check", "--no-cache", "src", "tests", "benchmarks"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# what a reader meets: the documents, the package, the configs, the benchmarks and the scripts
READ = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))] + [
    p for folder in ("src", "configs", "benchmarks", "scripts") for p in sorted((REPO / folder).rglob("*"))
    if p.suffix in {".py", ".toml", ".sh", ".md"}]


def test_nothing_a_reader_meets_names_an_issue_number():
    found = [f"{p.relative_to(REPO)}:{i}" for p in READ
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"\bissues? #?\d+|#\d{1,3}\b(?![0-9a-fA-F])", line)]
    assert not found


def test_the_readme_and_the_results_stay_short():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 200
    assert len((REPO / "docs" / "RESULTS.md").read_text(encoding="utf-8").splitlines()) <= 400


# --- the code a newcomer reads ----------------------------------------------------------------------------------------
SOURCES = sorted((REPO / "src" / "resbudget").rglob("*.py"))
# a number with a unit of time, memory, speed or a share: a measurement, which belongs in docs/RESULTS.md
MEASUREMENT = re.compile(r"\d[\d,.]*\s*(?:%|s\b|ms\b|seconds?\b|minutes?\b|min\b|hours?\b|[GMK]i?B\b|points?\b"
                         r"|img/s|images/s|[GT]FLOPS)")


def _functions(path: Path):
    import ast

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_the_run_module_tells_the_run_in_short_functions():
    run = REPO / "src" / "resbudget" / "train" / "run.py"
    assert len(run.read_text(encoding="utf-8").splitlines()) <= 300
    long = [f"{f.name}: {f.end_lineno - f.lineno + 1} lines" for f in _functions(run) if f.end_lineno - f.lineno >= 50]
    assert not long


def test_no_public_function_takes_more_than_eight_parameters():
    crowded = []
    for path in SOURCES:
        for f in _functions(path):
            a = f.args
            names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs) if x.arg not in ("self", "cls")]
            if not f.name.startswith("_") and len(names) > 8:
                crowded.append(f"{path.relative_to(REPO)}: {f.name} ({len(names)})")
    assert not crowded


def test_a_run_summary_is_read_by_its_fields_outside_its_own_module():
    own = REPO / "src" / "resbudget" / "train" / "summary.py"
    pattern = re.compile(r"\bsummary\w*\s*(?:\[\s*[\"']|\.get\(\s*[\"'])")
    found = [f"{p.relative_to(REPO)}:{i}" for p in SOURCES if p != own
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not found


def test_docstrings_say_what_and_why_and_leave_measurements_to_the_results():
    import ast

    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node) or ""
                found += [f"{path.relative_to(REPO)}: {m.group(0)!r}" for m in MEASUREMENT.finditer(text)]
    assert not found


def test_the_documents_speak_of_the_project_not_of_how_its_work_was_organised():
    words = re.compile(r"\b(?:the task|the review|(?:this|next|previous|the) session)\b", re.IGNORECASE)
    found = [f"{p.relative_to(REPO)}:{i}" for p in READ
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if words.search(line)]
    assert not found
