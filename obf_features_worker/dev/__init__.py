"""Development tooling: a local member from the open-source jars, the synthetic feeder, the demo."""
