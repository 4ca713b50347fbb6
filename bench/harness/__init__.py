"""Shared parts of the benchmarks (bench/run.py): processes, the HTTP client, /metrics, wrk, PostgreSQL, the table."""
