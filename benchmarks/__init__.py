"""Throughput and memory benchmarks (``python -m benchmarks``); not timed tests."""
