"""Performance package: hardware and model catalogue, engine step-time model, token counting.

Pure: stdlib only, no I/O, no clock, no imports from other inferplane packages.
"""

from __future__ import annotations

from inferplane.perf._catalogue import (
    GPU,
    GPUS,
    MODELS,
    ModelSpec,
    UnknownHardwareError,
    UnknownModelError,
    get_gpu,
    get_model,
)
from inferplane.perf._coldstart import (
    STORAGES,
    ColdStart,
    EngineStartup,
    Storage,
    cold_start,
    cold_start_s,
    get_storage,
)
from inferplane.perf._model import (
    Efficiency,
    PerfModel,
    StepCost,
    StepShape,
    causal_attention_pairs,
)
from inferplane.perf._tokens import (
    CHARS_PER_TOKEN,
    NON_TEXT_PART_TOKENS,
    count_chat_tokens,
    count_text_tokens,
    filler_text,
    text_pieces,
    text_seed,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "GPU",
    "GPUS",
    "MODELS",
    "NON_TEXT_PART_TOKENS",
    "STORAGES",
    "ColdStart",
    "Efficiency",
    "EngineStartup",
    "ModelSpec",
    "PerfModel",
    "StepCost",
    "StepShape",
    "Storage",
    "UnknownHardwareError",
    "UnknownModelError",
    "causal_attention_pairs",
    "cold_start",
    "cold_start_s",
    "count_chat_tokens",
    "count_text_tokens",
    "filler_text",
    "get_gpu",
    "get_model",
    "get_storage",
    "text_pieces",
    "text_seed",
]
