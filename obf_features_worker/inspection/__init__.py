"""Read-only inspection commands: ``status``, ``watch``, ``plot``, ``sql``."""
