"""Two cubes compared variable by variable (the code: :mod:`dynamics.bench.cube_diff`).

python scripts/compare_cubes.py OLD.zarr NEW.zarr
"""

import sys

from dynamics.bench.cube_diff import main

if __name__ == "__main__":
    sys.exit(main())
