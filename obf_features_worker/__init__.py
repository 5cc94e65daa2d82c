"""obf-features worker: order-book snapshots in Hazelcast -> per-bar features in Hazelcast."""

__version__ = "0.1.0"
