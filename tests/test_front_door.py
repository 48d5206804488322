"""How the tool starts, as a new user meets it: the wrong interpreter, a set-up without the
``models`` extra, a closed pipe and the ``structbench`` console script each end in one line
or a clean exit, never a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from structbench.results import PROJECT_ROOT

HIDE_MODULES = """\
import runpy, sys
from importlib.machinery import PathFinder

HIDDEN = set(sys.argv[1].split(","))


class Hide(PathFinder):  # as if the modules were never installed: find_spec gives None
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] in HIDDEN else PathFinder.find_spec(name, path, target)


sys.meta_path[sys.meta_path.index(PathFinder)] = Hide
sys.argv = ["bench.py", *sys.argv[2:]]
runpy.run_path("bench.py", run_name="__main__")
"""


def _bench(*args: str, python: tuple[str, ...] = (sys.executable,), stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run([*python, *args], cwd=PROJECT_ROOT, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120)


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_an_interpreter_without_the_dependencies_names_the_one_to_use() -> None:
    """``-S``: no site-packages, so no torch; the project's own folder is still on the path."""
    proc = _bench("bench.py", "--list", python=(sys.executable, "-S"))
    assert proc.returncode == 2
    line = _one_line(proc.stderr)
    assert "'torch'" in line and ".venv/bin/python bench.py" in line and "bash scripts/setup.sh" in line


def test_a_missing_models_extra_is_one_line_before_the_config_is_read(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = _bench("-c", HIDE_MODULES, "transformers,gguf", "--suite", "llama-compress", "--quick", "--out", str(out))
    assert proc.returncode == 2
    line = _one_line(proc.stderr)
    assert "llama-compress suite needs transformers, gguf" in line and "bash scripts/setup.sh --models" in line
    assert not out.exists()


def test_a_reader_that_left_gets_no_traceback() -> None:
    """``bench.py --list | head -1``: the pipe is closed before the listing is written."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = _bench("bench.py", "--list", stdout=write)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == ""


def test_the_console_script_is_bench_py() -> None:
    """``pip install -e .`` makes ``structbench``; its entry point resolves to the CLI and lists."""
    proc = _bench("-c", "import sys; from importlib.metadata import entry_points; "
                        "(script,) = entry_points(group='console_scripts', name='structbench'); "
                        "print(script.value); sys.exit(script.load()(['--list']))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("structbench.cli:main\nsuites:\n") and "kernels" in proc.stdout
