"""What is computed: neuron statistics, ablations, syntax evaluation, the scan."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wasserstein-dynamics")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
