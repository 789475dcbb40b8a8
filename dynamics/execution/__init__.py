"""Running units of work (scan steps, study conditions): serially or on Dask, with retries and cancellation."""
