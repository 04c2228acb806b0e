"""Where a run's numbers come from: the code's commit, and the host CPU (CPU runs repeat bit for bit on one kind of
CPU only)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.cache
def git_state() -> tuple[str | None, bool | None]:
    """(commit, whether tracked files had uncommitted changes) of the checkout this process imported its code from,
    as it was when first asked (the start of the first run), even if the checkout moves on during a long run. None
    outside a git checkout."""
    commit = _git("rev-parse", "HEAD") or None
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return commit, (bool(status) if status is not None else None)


def host_cpu() -> str:
    """The host CPU's model name (CPU runs repeat bit for bit on one kind of CPU only, and a GPU loop bound by launches
    runs at the speed of the CPU that drives it), and its core count."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not name:
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    # the widest bf16 path oneDNN can take: runs on CPUs with different ones do not repeat bit for bit
    isa = next((label for flag, label in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"),
                                          ("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), "")
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name} ({os.cpu_count()} cores{', ' + isa if isa else ''})"
