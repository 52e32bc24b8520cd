"""1 Hz telemetry of a running system: LB queues, replica engines, router workers."""
