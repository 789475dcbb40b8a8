"""Where results go: the zarr-backed xarray cube."""

from store.cube import open_cube

__all__ = ["open_cube"]
