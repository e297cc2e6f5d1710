"""Science kernels of zsds: pure functions of arrays and tables (no I/O, no Dask)."""
