"""Orchestration: mapping stages over quadrants with Dask, and the clusters that run them."""
