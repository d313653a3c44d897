"""The auth service: Google OAuth linking, encrypted token vault, refresh and revocation.
This release runs the process shell only (health, readiness, metrics, ServiceStarted)."""
