"""Benchmarks and builders of tiny test models. Run them as modules from the repository root
(`.venv/bin/python -m tools.bench_swap`); tools/server.py stands up a live server for them."""
