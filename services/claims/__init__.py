"""The claims service: claim codes and their brute-force defence.
This release runs the process shell only (health, readiness, metrics, ServiceStarted)."""
