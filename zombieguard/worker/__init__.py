"""What runs beside every framework worker: its runtime (heartbeat, watchdog, sweeper), the attempt
of each job, and the lifecycle around it (acquire, recovery wait, release, limit events)."""
