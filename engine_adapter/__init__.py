"""Read-only trader-side OB engine over DOLPHIN_OBF_FEATURES."""

from engine_adapter.adapter import AdapterConfig, AdapterStats, HazelcastOBEngine
from engine_adapter.cache import Resolution
from engine_adapter.features import (
    OBMacroFeatures,
    OBMarketFeatures,
    OBPlacementFeatures,
    OBSignalFeatures,
)
from engine_adapter.mock import MockOBEngine
from engine_adapter.wiring import wire

__all__ = [
    "AdapterConfig",
    "AdapterStats",
    "HazelcastOBEngine",
    "MockOBEngine",
    "OBMacroFeatures",
    "OBMarketFeatures",
    "OBPlacementFeatures",
    "OBSignalFeatures",
    "Resolution",
    "wire",
]
