"""Prometheus metrics of a Kiln server (`/metrics`)."""
