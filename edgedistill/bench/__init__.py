"""bench: latency, throughput and memory of each artifact on a hardware target.

- :mod:`edgedistill.bench.measure`: what one artifact, the machine and its sensors measure to;
- :mod:`edgedistill.bench.device`: the device side, each artifact in a fresh subprocess;
- ``python -m edgedistill.bench``: that device side as a command (a table, then one JSON line);
- :mod:`edgedistill.bench.remote`: the same runner on another machine over SSH;
- :mod:`edgedistill.bench.run`: the ``bench`` stage (RUN/bench/<target>/<artifact>.json).

Nothing here imports torch: the device side runs where torch is not installed.
"""
