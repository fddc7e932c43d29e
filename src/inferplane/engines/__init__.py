"""Engines: the continuous-batching core and the emulated OpenAI-compatible replica."""

from inferplane.engines._core import (
    Admitted,
    EngineCore,
    EngineLimits,
    EngineRequest,
    Finished,
    Preempted,
    Produced,
)
from inferplane.engines._emulator import EmulatorSettings, create_emulator_app
from inferplane.engines._live import LiveEngine, Stream

__all__ = [
    "Admitted",
    "EmulatorSettings",
    "EngineCore",
    "EngineLimits",
    "EngineRequest",
    "Finished",
    "LiveEngine",
    "Preempted",
    "Produced",
    "Stream",
    "create_emulator_app",
]
