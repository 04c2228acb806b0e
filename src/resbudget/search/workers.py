"""Several workers of one study or search on this machine (``--jobs N``): the command starts N-1 copies of itself,
each a worker of the same storage (the queue of resbudget.search.queue, or the search's Optuna study), and is the
N-th itself. Small nets then share one large GPU, or a CPU's cores (each worker gets its share of the threads). A
worker that dies has its run taken over by another once its heartbeat falls silent."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def worker_argv(argv: list[str], storage: str) -> list[str]:
    """``argv`` (a ``resbudget`` command line) without its ``--jobs``, sharing ``storage``."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == "--jobs":
            skip = True
        elif not token.startswith("--jobs="):
            out.append(token)
    return out if "--storage" in out or any(t.startswith("--storage=") for t in out) else [*out, "--storage", storage]


def threads_each(jobs: int) -> int:
    """The CPU threads each of ``jobs`` workers on this machine uses."""
    return max(1, (os.cpu_count() or 1) // jobs)


class Workers:
    """The ``jobs - 1`` other workers of a command, started at once, their output in ``log_dir/worker-K.log``."""

    def __init__(self, argv: list[str], jobs: int, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        env = os.environ | {"OMP_NUM_THREADS": str(threads_each(jobs))}
        self.started: list[tuple[int, subprocess.Popen, Path]] = []
        try:
            for k in range(2, jobs + 1):
                log = log_dir / f"worker-{k}.log"
                with open(log, "w") as f:
                    proc = subprocess.Popen([sys.executable, "-m", "resbudget", *argv], stdout=f,
                                            stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
                self.started.append((k, proc, log))
                (log_dir / f"worker-{k}.pid").write_text(f"{proc.pid}\n")
        except BaseException:  # none left running if the next one cannot start
            self.stop()
            raise

    def wait(self, say: Callable[[str], None]) -> None:
        """Wait for every worker; say one line for each that failed."""
        for k, proc, log in self.started:
            code = proc.wait()
            if code:
                how = f"was killed (signal {-code})" if code < 0 else f"exited with code {code}"
                say(f"worker {k} {how}; its output is in {log}. A run it left is taken over by a live worker once "
                    "its heartbeat is silent, or by the next start of the command")

    def stop(self) -> None:
        for _, proc, _ in self.started:
            if proc.poll() is None:
                proc.terminate()
        for _, proc, _ in self.started:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
