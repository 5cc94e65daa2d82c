"""The pure feature engine: snapshot validation, the per-asset store, numba kernels, the bar step
and its checkpoint. numpy + numba only (importable without hazelcast)."""
