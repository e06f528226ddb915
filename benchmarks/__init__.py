"""fastconv's benchmark suite: per-operator and per-model timings of fastconv against torch.nn.

`python benchmarks/run.py` writes the report (see benchmarks/README.md); `pytest benchmarks/
--benchmark-only` runs the same per-operator cases under pytest-benchmark.
"""
