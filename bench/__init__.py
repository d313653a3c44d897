"""Benchmarks: everything real (NATS, PostgreSQL, the services as processes, an HTTP
receiver on 127.0.0.1). Run with `make bench`; figures are printed and written to
bench/results/<name>.json."""
