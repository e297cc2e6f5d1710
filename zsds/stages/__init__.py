"""Pipeline stages: I/O and database at the edges, science kernels from :mod:`zsds.core`."""
