"""structbench command line: ``python bench.py --suite kernels --quick``; see README."""
import sys

from structbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
