"""Where results go: the zarr-backed xarray cube."""

from store.cube import open_cube
from store.multi import open_cubes

__all__ = ["open_cube", "open_cubes"]
