"""Scale and request-economy benchmarks, run on demand: ``python -m benchmarks`` (see docs/performance.md)."""
