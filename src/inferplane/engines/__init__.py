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
from inferplane.engines._emulator import (
    EmulatorSettings,
    create_emulator_app,
    prompt_block_hashes,
)
from inferplane.engines._live import LiveEngine, Observer, Stream

__all__ = [
    "Admitted",
    "EmulatorSettings",
    "EngineCore",
    "EngineLimits",
    "EngineRequest",
    "Finished",
    "LiveEngine",
    "Observer",
    "Preempted",
    "Produced",
    "Stream",
    "create_emulator_app",
    "prompt_block_hashes",
]
