"""The worker service: configuration, bar clocks, grid I/O, the leader lease, health, metrics and
the worker loop that wires them to the engine."""
