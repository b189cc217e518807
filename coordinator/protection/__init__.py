"""Privacy modes at the coordinator as objects: one file per mode, a DP wrapper, a registry."""

from coordinator.protection.base import Collected, Protection, TrainRound, WeightPolicy
from coordinator.protection.registry import PROTECTIONS, ProtectionInputs, build_protection

__all__ = [
    "PROTECTIONS",
    "Collected",
    "Protection",
    "ProtectionInputs",
    "TrainRound",
    "WeightPolicy",
    "build_protection",
]
