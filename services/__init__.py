"""Lite Claw services. Each is an entry point (`python -m services.<name>`), never imported
by another service."""
