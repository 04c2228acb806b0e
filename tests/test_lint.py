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


def test_readme_results_and_the_package_need_no_issue_numbers():
    files = [REPO / "README.md", REPO / "docs" / "RESULTS.md", *sorted((REPO / "src").rglob("*.py")),
             *sorted((REPO / "src").rglob("*.toml"))]
    found = [f"{p.relative_to(REPO)}:{i}" for p in files
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"\bissues? #?\d+|#\d{1,3}\b(?![0-9a-fA-F])", line)]
    assert not found


def test_the_readme_and_the_results_stay_short():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 200
    assert len((REPO / "docs" / "RESULTS.md").read_text(encoding="utf-8").splitlines()) <= 400
