"""Benchmarks of aptune against the methods users would pick instead (run by hand, not in CI)."""
