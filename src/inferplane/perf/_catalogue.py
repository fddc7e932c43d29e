"""Catalogue of accelerators and models: the public figures the performance model runs on.

Every number here is a public figure with its source next to it. Hardware rates come
from NVIDIA datasheets (dense, no sparsity); device memory is what the driver reports
(``nvidia-smi`` ``memory.total``), because that is the total vLLM's
``gpu_memory_utilization`` is a fraction of; model shapes come from each model's
Hugging Face ``config.json``.

Prices are overridable defaults, not truths: on-demand list prices of one public source
(AWS EC2 On-Demand, US East (N. Virginia), Linux, as published in September 2026; the
P4/P5 rates date from AWS's June 2025 GPU price cut), divided by the instance's GPU
count. Replace them with ``dataclasses.replace(gpu, price_per_hour=...)`` for a real plan.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "GPU",
    "GPUS",
    "MODELS",
    "ModelSpec",
    "UnknownHardwareError",
    "UnknownModelError",
    "get_gpu",
    "get_model",
]

_MIB = 2**20
_LINK_NAMES = {"nvlink": "NVLink", "pcie": "PCIe"}
_AWS_PRICES = "AWS EC2 On-Demand price list, us-east-1, Linux, September 2026"


class UnknownHardwareError(ValueError):
    """Raised by `get_gpu` for a name that is neither a canonical GPU name nor an alias."""


class UnknownModelError(ValueError):
    """Raised by `get_model` for a name that is neither a canonical model name nor an alias."""


@dataclass(frozen=True)
class GPU:
    """One accelerator as the performance model sees it (rates are per GPU)."""

    name: str
    long_name: str
    bf16_flops: float
    """Dense BF16 tensor-core FLOP/s (datasheet figure without sparsity)."""
    hbm_bandwidth: float
    """Device memory bandwidth, bytes/s."""
    memory_bytes: float
    """Device memory as the driver reports it (nvidia-smi memory.total), bytes."""
    interconnect_bandwidth: float
    """Bytes/s per GPU per direction between GPUs of one node (NVLink or PCIe)."""
    link: str
    """``"nvlink"`` or ``"pcie"``: what joins GPUs of one node, which decides how vLLM
    all-reduces between them (see `Efficiency`)."""
    price_per_hour: float
    """On-demand USD per GPU-hour: an overridable default (see module docstring)."""
    source: str

    def __post_init__(self) -> None:
        for field_name in (
            "bf16_flops",
            "hbm_bandwidth",
            "memory_bytes",
            "interconnect_bandwidth",
        ):
            if not getattr(self, field_name) > 0:
                raise ValueError(f"GPU {self.name}: {field_name} must be > 0")
        if self.link not in _LINK_NAMES:
            raise ValueError(f"GPU {self.name}: link must be one of {', '.join(_LINK_NAMES)}")
        if self.price_per_hour < 0:
            raise ValueError(f"GPU {self.name}: price_per_hour must be >= 0")

    @property
    def link_name(self) -> str:
        """The link as people write it: "NVLink" or "PCIe"."""
        return _LINK_NAMES[self.link]


@dataclass(frozen=True)
class ModelSpec:
    """Shape of one decoder-only transformer, as in its Hugging Face ``config.json``.

    MoE models are described with SwiGLU experts of ``intermediate_size`` (three
    ``hidden_size x intermediate_size`` matrices each), as Mixtral is.
    """

    name: str
    hf_id: str
    num_params: float
    num_active_params: float
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_context: int
    num_experts: int = 1
    num_experts_per_token: int = 1
    dtype_bytes: int = 2
    source: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.num_active_params <= self.num_params:
            raise ValueError(f"model {self.name}: need 0 < num_active_params <= num_params")
        if not 1 <= self.num_experts_per_token <= self.num_experts:
            raise ValueError(f"model {self.name}: need 1 <= num_experts_per_token <= num_experts")
        if self.num_attention_heads % self.num_kv_heads:
            raise ValueError(f"model {self.name}: num_kv_heads must divide num_attention_heads")
        if self.expert_params >= self.num_params:
            raise ValueError(f"model {self.name}: expert weights exceed num_params")

    @property
    def weight_bytes(self) -> float:
        """Bytes of all weights at ``dtype_bytes`` per parameter."""
        return self.num_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V cache one token occupies across all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def expert_params(self) -> int:
        """Parameters in routed experts (0 for a dense model); the rest is shared by all tokens."""
        if self.num_experts == 1:
            return 0
        return self.num_layers * self.num_experts * 3 * self.hidden_size * self.intermediate_size


# NVIDIA datasheets list tensor throughput "with sparsity"; the dense figure is half.
# NVLink figures are totals over both directions; per direction is half.
_GPU_LIST: tuple[GPU, ...] = (
    GPU(
        name="H100",
        long_name="NVIDIA H100 SXM5 80GB",
        bf16_flops=989e12,  # 1,979 TFLOPS BF16 with sparsity / 2
        hbm_bandwidth=3.35e12,
        memory_bytes=81559 * _MIB,  # nvidia-smi "NVIDIA H100 80GB HBM3": 81559MiB
        interconnect_bandwidth=450e9,  # NVLink 4: 900 GB/s total / 2
        link="nvlink",
        price_per_hour=55.04 / 8,  # p5.48xlarge, 8x H100
        source=(
            "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column (BF16 1,979 TFLOPS with "
            "sparsity, 3.35 TB/s, NVLink 900 GB/s); memory: nvidia-smi memory.total 81559 MiB; "
            f"price: p5.48xlarge $55.04/h / 8 ({_AWS_PRICES})"
        ),
    ),
    GPU(
        name="H200",
        long_name="NVIDIA H200 SXM 141GB",
        bf16_flops=989e12,  # 1,979 TFLOPS BF16 with sparsity / 2
        hbm_bandwidth=4.8e12,
        memory_bytes=143771 * _MIB,  # nvidia-smi "NVIDIA H200": 143771MiB
        interconnect_bandwidth=450e9,  # NVLink 4: 900 GB/s total / 2
        link="nvlink",
        price_per_hour=63.296 / 8,  # p5en.48xlarge, 8x H200
        source=(
            "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column (BF16 1,979 TFLOPS with "
            "sparsity, 4.8 TB/s, 141 GB, NVLink 900 GB/s); memory: nvidia-smi memory.total "
            f"143771 MiB; price: p5en.48xlarge $63.296/h / 8 ({_AWS_PRICES})"
        ),
    ),
    GPU(
        name="A100",
        long_name="NVIDIA A100 SXM4 80GB",
        bf16_flops=312e12,  # 624 TFLOPS BF16 with sparsity / 2
        hbm_bandwidth=2.039e12,
        memory_bytes=81920 * _MIB,  # nvidia-smi "NVIDIA A100-SXM4-80GB": 81920MiB
        interconnect_bandwidth=300e9,  # NVLink 3: 600 GB/s total / 2
        link="nvlink",
        price_per_hour=27.44705 / 8,  # p4de.24xlarge, 8x A100 80GB
        source=(
            "NVIDIA A100 Tensor Core GPU datasheet, A100 80GB SXM column (BF16 312 TFLOPS "
            "dense, 2,039 GB/s, NVLink 600 GB/s); memory: nvidia-smi memory.total 81920 MiB; "
            f"price: p4de.24xlarge $27.44705/h / 8 ({_AWS_PRICES})"
        ),
    ),
    GPU(
        name="L40S",
        long_name="NVIDIA L40S 48GB",
        bf16_flops=362.05e12,  # 733 TFLOPS BF16 with sparsity / 2 (datasheet: 362.05)
        hbm_bandwidth=864e9,  # GDDR6, not HBM; the field is "device memory bandwidth"
        memory_bytes=46068 * _MIB,  # nvidia-smi "NVIDIA L40S": 46068MiB
        interconnect_bandwidth=32e9,  # no NVLink: PCIe Gen4 x16, 64 GB/s total / 2
        link="pcie",
        price_per_hour=1.861,  # g6e.xlarge, 1x L40S
        source=(
            "NVIDIA L40S datasheet (BF16 362.05 TFLOPS dense, 864 GB/s, 48 GB GDDR6, "
            "PCIe Gen4 x16 64 GB/s bidirectional); memory: nvidia-smi memory.total 46068 MiB; "
            f"price: g6e.xlarge $1.861/h ({_AWS_PRICES})"
        ),
    ),
    GPU(
        name="L4",
        long_name="NVIDIA L4 24GB",
        bf16_flops=121e12,  # 242 TFLOPS BF16 with sparsity / 2
        hbm_bandwidth=300e9,  # GDDR6
        memory_bytes=23034 * _MIB,  # nvidia-smi "NVIDIA L4": 23034MiB
        interconnect_bandwidth=32e9,  # no NVLink: PCIe Gen4 x16, 64 GB/s total / 2
        link="pcie",
        price_per_hour=0.8048,  # g6.xlarge, 1x L4
        source=(
            "NVIDIA L4 Tensor Core GPU datasheet (BF16 242 TFLOPS with sparsity, 300 GB/s, "
            "24 GB GDDR6, PCIe Gen4 x16 64 GB/s); memory: nvidia-smi memory.total 23034 MiB; "
            f"price: g6.xlarge $0.8048/h ({_AWS_PRICES})"
        ),
    ),
)

_GPU_ALIASES: dict[str, str] = {
    "h100-sxm": "H100",
    "h100-sxm5": "H100",
    "h100-80gb": "H100",
    "h100-sxm5-80gb": "H100",
    "h100-80gb-hbm3": "H100",
    "nvidia-h100-80gb-hbm3": "H100",  # nvidia-smi name
    "h200-sxm": "H200",
    "h200-141gb": "H200",
    "nvidia-h200": "H200",
    "a100-80gb": "A100",
    "a100-sxm": "A100",
    "a100-sxm4": "A100",
    "a100-sxm4-80gb": "A100",
    "a100-80gb-sxm": "A100",
    "nvidia-a100-sxm4-80gb": "A100",
    "l40s-48gb": "L40S",
    "nvidia-l40s": "L40S",
    "l4-24gb": "L4",
    "nvidia-l4": "L4",
}

# Parameter counts are exact sums over the config shapes (embeddings, untied LM head,
# attention, MLP or experts, norms); tests recompute them from the fields.
_MODEL_LIST: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="llama-3.1-8b",
        hf_id="meta-llama/Llama-3.1-8B-Instruct",
        num_params=8_030_261_248,
        num_active_params=8_030_261_248,
        num_layers=32,
        hidden_size=4096,
        num_attention_heads=32,
        num_kv_heads=8,
        head_dim=128,  # hidden_size / num_attention_heads
        intermediate_size=14336,
        vocab_size=128256,
        max_context=131072,
        source="huggingface.co/meta-llama/Llama-3.1-8B-Instruct config.json",
    ),
    ModelSpec(
        name="llama-3.1-70b",
        hf_id="meta-llama/Llama-3.1-70B-Instruct",
        num_params=70_553_706_496,
        num_active_params=70_553_706_496,
        num_layers=80,
        hidden_size=8192,
        num_attention_heads=64,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=28672,
        vocab_size=128256,
        max_context=131072,
        source="huggingface.co/meta-llama/Llama-3.1-70B-Instruct config.json",
    ),
    ModelSpec(
        name="qwen2.5-7b",
        hf_id="Qwen/Qwen2.5-7B-Instruct",
        num_params=7_615_616_512,  # includes the q/k/v biases Qwen2 has
        num_active_params=7_615_616_512,
        num_layers=28,
        hidden_size=3584,
        num_attention_heads=28,
        num_kv_heads=4,
        head_dim=128,
        intermediate_size=18944,
        vocab_size=152064,
        # config.json says 32768; the model card reaches 131072 only with YaRN rope scaling.
        max_context=32768,
        source="huggingface.co/Qwen/Qwen2.5-7B-Instruct config.json",
    ),
    ModelSpec(
        name="mixtral-8x7b",
        hf_id="mistralai/Mixtral-8x7B-Instruct-v0.1",
        num_params=46_702_792_704,
        num_active_params=12_879_925_248,  # shared weights + 2 of 8 experts per layer
        num_layers=32,
        hidden_size=4096,
        num_attention_heads=32,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=14336,
        vocab_size=32000,
        max_context=32768,
        num_experts=8,
        num_experts_per_token=2,
        source="huggingface.co/mistralai/Mixtral-8x7B-Instruct-v0.1 config.json",
    ),
)

_MODEL_ALIASES: dict[str, str] = {
    "llama3.1-8b": "llama-3.1-8b",
    "meta-llama-3.1-8b": "llama-3.1-8b",
    "llama3.1-70b": "llama-3.1-70b",
    "meta-llama-3.1-70b": "llama-3.1-70b",
    "qwen2.5-7b-instruct": "qwen2.5-7b",
    "mixtral-8x7b-v0.1": "mixtral-8x7b",
    "mixtral-8x7b-instruct-v0.1": "mixtral-8x7b",
}

GPUS: Mapping[str, GPU] = MappingProxyType({gpu.name: gpu for gpu in _GPU_LIST})
"""Catalogue GPUs by canonical name (read-only)."""

MODELS: Mapping[str, ModelSpec] = MappingProxyType({m.name: m for m in _MODEL_LIST})
"""Catalogue models by canonical name (read-only)."""

_SEPARATORS = re.compile(r"[\s_]+")
_GPU_INDEX: dict[str, str] = {
    **{name.lower(): name for name in GPUS},
    **_GPU_ALIASES,
}


def _normalize(name: str) -> str:
    # Case, spaces and underscores never distinguish two catalogue entries.
    return _SEPARATORS.sub("-", name.strip().lower())


def _model_keys(key: str) -> list[str]:
    # "meta-llama/Llama-3.1-8B-Instruct" -> "llama-3.1-8b-instruct" -> "llama-3.1-8b".
    keys = [key]
    if "/" in key:
        keys.append(key.rsplit("/", 1)[1])
    for candidate in list(keys):
        for suffix in ("-instruct", "-chat"):
            if candidate.endswith(suffix):
                keys.append(candidate.removesuffix(suffix))
    return keys


def get_gpu(name: str) -> GPU:
    """Return the catalogue GPU for a canonical name or alias, case-insensitively.

    Raises `UnknownHardwareError` (a `ValueError`) naming the known GPUs otherwise.
    """
    canonical = _GPU_INDEX.get(_normalize(name))
    if canonical is None:
        known = ", ".join(GPUS)
        raise UnknownHardwareError(f"unknown GPU {name!r}; known GPUs: {known}")
    return GPUS[canonical]


def get_model(name: str) -> ModelSpec:
    """Return the catalogue model for a canonical name, alias or Hugging Face id.

    Matching ignores case, an ``org/`` prefix and an ``-Instruct``/``-chat`` suffix.
    Raises `UnknownModelError` (a `ValueError`) naming the known models otherwise.
    """
    for key in _model_keys(_normalize(name)):
        canonical = key if key in MODELS else _MODEL_ALIASES.get(key)
        if canonical is not None:
            return MODELS[canonical]
    known = ", ".join(MODELS)
    raise UnknownModelError(f"unknown model {name!r}; known models: {known}")
