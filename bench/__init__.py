"""Benchmarks: `python -m bench` (`make bench`) measures the platform against raw Celery and a
bare Flask app on this machine, prints a table and writes bench/results.json."""
