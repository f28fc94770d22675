"""Benchmarks, run by hand (never by CI): a load generator and a side-by-side peer comparison."""
