"""structbench command line: ``python bench.py --suite kernels --quick``; see README."""
import sys

try:
    from structbench.cli import main
except ModuleNotFoundError as missing:
    if (missing.name or "").partition(".")[0] in ("structbench", "suites", "matrices"):
        raise  # the project's own code is broken: that traceback is the report
    # An interpreter without the project's dependencies (not the set-up's .venv): say which to use.
    print(f"error: {sys.executable} lacks {missing.name!r}, a structbench dependency; run "
          ".venv/bin/python bench.py ... (create .venv with: bash scripts/setup.sh)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(main())
