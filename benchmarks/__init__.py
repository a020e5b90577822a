"""Benchmarks for vector_pipeline, run by `make bench` (outside the test suite)."""
