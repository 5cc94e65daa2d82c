"""Read-only trader-side OB engine over DOLPHIN_OBF_FEATURES."""

from engine_adapter.adapter import AdapterConfig, AdapterStats, HazelcastOBEngine
from engine_adapter.cache import Resolution
from engine_adapter.features import (
    OBMacroFeatures,
    OBMarketFeatures,
    OBPlacementFeatures,
    OBSignalFeatures,
)

__all__ = [
    "AdapterConfig",
    "AdapterStats",
    "HazelcastOBEngine",
    "OBMacroFeatures",
    "OBMarketFeatures",
    "OBPlacementFeatures",
    "OBSignalFeatures",
    "Resolution",
]
