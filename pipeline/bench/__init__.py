"""Benchmarks: `python -m pipeline bench <extract|train>` print one JSON line per measurement."""
