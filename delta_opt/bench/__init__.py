"""Speed and memory benchmarks, importable so that ``delta-opt bench`` and ``benchmarks/*.py``
run the same code. Every benchmark returns a JSON-serialisable dict and measures its baseline in
the same process run."""
