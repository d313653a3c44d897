"""The scheduler service: profiles, heartbeat jobs, the due index and SlotDue."""
