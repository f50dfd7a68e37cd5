"""snaptree's backend comparison benchmarks.

``python -m benchmarks.run [--quick|--smoke] [--out DIR]`` runs the same work
on every installed backend that can run on this machine and writes a JSON
result, a Markdown table and PNG charts.  The timing itself is done by
pytest-benchmark (``benchmarks/bench_ops.py``); :mod:`benchmarks.provision`
defines how a backend gets fresh volumes to measure.  See ``README.md``.
"""
