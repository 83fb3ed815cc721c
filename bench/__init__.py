"""Benchmarks that print Markdown tables; run them with ``python -m bench.<name>``. Not tests."""
