"""AWS layer, shaped like the Amazon provider: hooks, operators, sensors, triggers and waiters per service."""
