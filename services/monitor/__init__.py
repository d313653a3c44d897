"""The monitor service: projections over every service's events, for the runbook's
metrics and alerts."""
