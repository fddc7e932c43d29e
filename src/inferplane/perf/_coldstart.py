"""How long a new replica takes from "start it" to "serving": the autoscaler's lag.

A vLLM replica's cold start is four phases, one after another::

    total = container_s + process_s + load_s + warmup_s

* ``container_s``: scheduling the pod and starting its container (the image already
  on the node; pulling a multi-GB image is not modelled, add it here);
* ``process_s``: Python and vLLM imports, platform detection, model config, tokenizer,
  worker processes, API server: the same for every model;
* ``load_s``: reading the weights into GPU memory. Each tensor-parallel rank loads its
  ``1/tp`` shard at once, so the per-rank loader runs ``tp`` times in parallel, but the
  ranks share the node's storage: ``max(bytes / storage rate, bytes / tp / loader rate)``;
* ``warmup_s``: torch.compile (from its cache, or compiled afresh), KV-cache
  profiling and CUDA graph capture, which grow with the number of layers.

The engine constants are fitted to one published sweep (Kabakibo, Trivedi, Wang,
"Breaking the Ice: Analyzing Cold Start Latency in vLLM", MLSys 2026; data in
github.com/upb-cn/vllm-startup-profiler, ``experiments/A100/examples/model_size``:
vLLM 0.10.0 V1 engine, one A100, 11 models from 0.5B to 14B, 5 runs each), whose
startup is mostly CPU-bound: on a faster host every phase shrinks (the same study's
``node5`` machine starts Llama-2-7B in 25 s instead of 45 s). Override them with
`EngineStartup` for another host or engine version.

Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from inferplane.perf._catalogue import GPU, ModelSpec

__all__ = [
    "STORAGES",
    "ColdStart",
    "EngineStartup",
    "Storage",
    "cold_start",
    "cold_start_s",
    "get_storage",
]

_MIB = 2**20
_GIB = 2**30
_STARTUP_STUDY = "github.com/upb-cn/vllm-startup-profiler experiments/A100/examples/model_size"
_STREAMER_BENCH = "github.com/run-ai/runai-model-streamer docs/src/benchmarks.md"


@dataclass(frozen=True)
class Storage:
    """Where a replica's weights come from, and the loader that reads them.

    ``read_bandwidth`` is what the medium delivers to one node, shared by the replica's
    tensor-parallel ranks; ``loader_bandwidth`` is what one rank's loader can turn into
    GPU tensors when storage is not the limit. Either may be ``math.inf``.
    """

    name: str
    read_bandwidth: float
    """Bytes/s the medium delivers to one node (all ranks of a replica together)."""
    loader_bandwidth: float
    """Bytes/s one rank's loader reaches when the medium keeps up."""
    source: str

    def __post_init__(self) -> None:
        for field_name in ("read_bandwidth", "loader_bandwidth"):
            value = getattr(self, field_name)
            if not value > 0:  # also rejects NaN
                raise ValueError(f"Storage {self.name}: {field_name} must be > 0, got {value}")

    def load_s(self, weight_bytes: float, tp: int = 1) -> float:
        """Seconds to load ``weight_bytes`` split evenly over ``tp`` ranks."""
        if weight_bytes < 0 or tp < 1:
            raise ValueError("need weight_bytes >= 0 and tp >= 1")
        return max(weight_bytes / self.read_bandwidth, weight_bytes / tp / self.loader_bandwidth)


# vLLM's default safetensors loader: 11 models of 1.2 to 28 GB loaded at 1.69 to 2.12
# GB/s, 1.80 GB/s over all bytes (A100 host of the startup study, weights on local disk
# and read repeatedly, so in the page cache): the loader, not the disk, sets the pace.
# On network block storage it does worse than the volume's rating (Run:ai measured 48 s
# for Llama-3-8B from a gp3 volume that its concurrent streamer read in 14 s), which
# the gp3 presets below do not model: they assume a concurrent loader.
_DEFAULT_LOADER = 1.8e9

_STORAGE_LIST: tuple[Storage, ...] = (
    Storage(
        name="page-cache",
        read_bandwidth=math.inf,  # host memory outruns the loader by an order of magnitude
        loader_bandwidth=_DEFAULT_LOADER,
        source=(
            "weights already in the node's page cache (a restart on a warm node); loader "
            f"rate 1.8 GB/s fitted to vLLM 0.10 load times ({_STARTUP_STUDY})"
        ),
    ),
    Storage(
        name="local-nvme",
        read_bandwidth=6.9e9,  # one PCIe Gen4 drive; a RAID0 of n drives reads ~n times that
        loader_bandwidth=_DEFAULT_LOADER,
        source=(
            "Kioxia CM6 PCIe 4.0 enterprise NVMe datasheet: sequential read up to 6.9 GB/s; "
            f"vLLM default loader 1.8 GB/s per rank ({_STARTUP_STUDY})"
        ),
    ),
    Storage(
        name="ebs-gp3",
        read_bandwidth=125 * _MIB,  # gp3's included baseline throughput
        loader_bandwidth=math.inf,
        source=(
            "Amazon EBS gp3 volume: 125 MiB/s baseline throughput, provisionable from 125 "
            "to 2,000 MiB/s (EC2 CreateVolume API reference, Throughput)"
        ),
    ),
    Storage(
        name="ebs-gp3-1000",
        read_bandwidth=1000 * _MIB,
        loader_bandwidth=math.inf,
        source=(
            "Amazon EBS gp3 provisioned at 1,000 MiB/s; Run:ai Model Streamer read "
            f"Llama-3-8B from such a volume at 1.03 GiB/s, 14.36 s ({_STREAMER_BENCH})"
        ),
    ),
    Storage(
        name="s3-streamer",
        read_bandwidth=3.51 * _GIB,
        loader_bandwidth=math.inf,  # the measured rate already includes the loader
        source=(
            "Amazon S3 in the same region streamed to GPU by the Run:ai Model Streamer "
            f"(vLLM --load-format runai_streamer): Llama-3-8B bf16 in 4.24 s, 3.51 GiB/s, "
            f"g5.12xlarge ({_STREAMER_BENCH})"
        ),
    ),
)

STORAGES: Mapping[str, Storage] = MappingProxyType({s.name: s for s in _STORAGE_LIST})
"""Storage presets by name (read-only)."""


def get_storage(name: str) -> Storage:
    """Return the storage preset ``name`` (case-insensitive); `ValueError` naming the
    known presets otherwise."""
    storage = STORAGES.get(name.strip().lower().replace("_", "-"))
    if storage is None:
        raise ValueError(f"unknown storage {name!r}; known: {', '.join(STORAGES)}")
    return storage


@dataclass(frozen=True)
class EngineStartup:
    """Fixed and per-layer costs of starting an engine; every default is overridable.

    Fitted to the startup study's A100 sweep (see the module docstring): its 11 models
    gave the process and warm-up terms below, and of the three models it held out for
    validation, Mistral-7B is predicted within 4% and MPT-7B and Falcon-11B within 10%.
    """

    container_s: float = 0.0
    """Pod scheduling and container start with the image cached on the node (assumption:
    negligible next to the rest; an uncached vLLM image pull takes minutes)."""
    process_s: float = 18.2
    """Process start to "loading weights", plus tokenizer and API server: what remains of
    the measured wall time after weight loading and engine init, 17.9 to 18.9 s over
    all 11 models (it does not depend on the model)."""
    warmup_base_s: float = 1.7
    """Intercept of vLLM's "init engine (profile, create kv cache, warmup model)" time,
    fitted by least squares over the 11 models (torch.compile cache warm, CUDA graphs
    for vLLM 0.10's default 67 batch sizes)."""
    warmup_per_layer_s: float = 0.57
    """Slope of that fit per decoder layer (14.8 s at 24 layers to 26.4 s at 48)."""
    compile_cached: bool = True
    """Whether torch.compile finds its cache (vLLM keeps it in ~/.cache/vllm; a fresh pod
    has it only when that directory is persisted or shared)."""
    compile_miss_per_layer_s: float = 0.8
    """Extra seconds per layer when the compile cache misses. The startup study's
    ``node5`` host: 0.71 to 0.83 s per layer over its 11 models (uncached minus cached
    init, e.g. Llama-2-7B 35.0 s against 11.4 s); Tensorfuse ("Reducing GPU Cold Start
    Time when using vLLM", 2025) measured graph compilation of Llama-3.1-8B on an L40S
    at 42 s uncached against 13 s cached, 0.9 s per layer."""

    def __post_init__(self) -> None:
        for name in (
            "container_s",
            "process_s",
            "warmup_base_s",
            "warmup_per_layer_s",
            "compile_miss_per_layer_s",
        ):
            value = getattr(self, name)
            if not value >= 0:  # also rejects NaN
                raise ValueError(f"EngineStartup.{name} must be >= 0, got {value}")

    def warmup_s(self, num_layers: int) -> float:
        """Seconds of compile, profiling and graph capture for a model of ``num_layers``."""
        per_layer = self.warmup_per_layer_s
        if not self.compile_cached:
            per_layer += self.compile_miss_per_layer_s
        return self.warmup_base_s + per_layer * num_layers


@dataclass(frozen=True)
class ColdStart:
    """Seconds of each phase of one replica's cold start; they run one after another."""

    container_s: float
    process_s: float
    load_s: float
    warmup_s: float

    @property
    def total(self) -> float:
        """Seconds from "start a replica" to "it serves"."""
        return self.container_s + self.process_s + self.load_s + self.warmup_s


def cold_start(
    model: ModelSpec,
    gpu: GPU,
    tp: int,
    storage: Storage,
    engine: EngineStartup = EngineStartup(),  # frozen, so sharing one default is safe
) -> ColdStart:
    """Phases of starting ``model`` on ``tp`` GPUs of kind ``gpu``, weights from ``storage``.

    Raises `ValueError` when ``tp`` is not a positive integer or when a rank's share of
    the weights alone exceeds the GPU's memory (such a replica never becomes ready).
    Warm-up is taken as the same on every rank, which run it in parallel (assumption:
    the few seconds of NCCL set-up for ``tp > 1`` are ignored).
    """
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ValueError(f"tp must be an integer >= 1, got {tp!r}")
    weights_per_gpu = model.weight_bytes / tp
    if weights_per_gpu > gpu.memory_bytes:
        raise ValueError(
            f"{model.name} does not fit on {tp} x {gpu.name}: "
            f"{weights_per_gpu / 1e9:.1f} GB of weights per GPU, "
            f"{gpu.memory_bytes / 1e9:.1f} GB of memory"
        )
    result = ColdStart(
        container_s=engine.container_s,
        process_s=engine.process_s,
        load_s=storage.load_s(model.weight_bytes, tp),
        warmup_s=engine.warmup_s(model.num_layers),
    )
    assert result.total > 0
    return result


def cold_start_s(
    model: ModelSpec,
    gpu: GPU,
    tp: int,
    storage: Storage,
    engine: EngineStartup = EngineStartup(),
) -> float:
    """Seconds from "start a replica" to "it serves": ``cold_start(...).total``."""
    return cold_start(model, gpu, tp, storage, engine).total
