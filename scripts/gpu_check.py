"""GPU check: `dynamics scan` and `dynamics ablate` on a Pythia-shaped model, end to end, offline.

The code is :mod:`dynamics.bench.gpu_check` (its docstring: what is built and run, and the options).

    python scripts/gpu_check.py --out /tmp/gpucheck                       # on a GPU machine
    python scripts/gpu_check.py --shape tiny --device cpu --out /tmp/gc   # CPU smoke test
"""

import sys

from dynamics.bench.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
