"""vqedge.benchmarks: how fast and how well vqedge runs, measured.

``quick`` is ``vqedge bench`` (the runtime alone); ``compare`` is the full comparison with
PyTorch and OpenVINO (``python -m vqedge.benchmarks.compare``), each configuration in a fresh
process (``worker``); ``timing`` and ``profiling`` are the helpers they share. Results are
written to the repository's ``benchmarks/results/``, which is not installed.
"""
