"""The heartbeat service: consumes SlotDue, delivers, records exactly one outcome per slot."""
