"""Helpers for tests, benchmarks and the sample model's training; not part of the runtime package."""
