"""The serving benchmark: ``python -m benchmarks.serving`` (see ``benchmarks/README.md``)."""
