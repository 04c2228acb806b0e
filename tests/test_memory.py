"""The allocator setting of the command line: applied in a process of its own, never in a caller's."""

import subprocess
import sys

import pytest

CHECK = "from resbudget._memory import keep_freed_memory; print(keep_freed_memory())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_process_of_its_own_keeps_freed_memory_unless_told_not_to():
    def child(**env):
        import os

        out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60,
                             env=os.environ | env)
        return out.stdout.strip()

    assert child() == "True"
    assert child(RESBUDGET_KEEP_FREED_MEMORY="0") == "False"


def test_a_callers_process_is_left_as_it_is(monkeypatch, capsys):
    from resbudget import cli

    def touched():
        raise AssertionError("main(argv) set the allocator of its caller's process")

    monkeypatch.setattr(cli, "keep_freed_memory", touched)
    assert cli.main(["presets"]) == 0
    assert "airres" in capsys.readouterr().out
