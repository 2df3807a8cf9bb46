"""Benchmarks that run against real engines: see benchmarks/README.md."""
