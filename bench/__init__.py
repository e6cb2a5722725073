"""Benchmarks: speed and memory goals live here, printed as tables, not in timed tests."""
