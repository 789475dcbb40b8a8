"""Where results go: the zarr-backed xarray cube."""

from store.multi import open_cubes
from store.opening import open_cube

__all__ = ["open_cube", "open_cubes"]
