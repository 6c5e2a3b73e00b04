"""Benchmarks of salon-bridge (never run by the test suite): see docs/performance.md."""
