"""Library code shared by every Lite Claw service. Libraries never run; services do."""
