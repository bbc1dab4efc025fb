"""The throughput benchmark suite (``python -m benchmarks``); see ``benchmarks/README.md``.

Not part of the tests: it measures, it does not assert. Every tool runs in its own subprocess
(``benchmarks.workers``) so imports, thread settings and wait policies never leak between them.
"""
