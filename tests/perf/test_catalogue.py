"""Catalogue: figures, derived sizes, lookups with aliases, errors."""

from __future__ import annotations

import dataclasses

import pytest

from inferplane.perf import (
    GPUS,
    MODELS,
    ModelSpec,
    UnknownHardwareError,
    UnknownModelError,
    get_gpu,
    get_model,
)


def test_catalogue_holds_the_required_entries() -> None:
    assert {"H100", "H200", "A100", "L40S", "L4"} <= set(GPUS)
    assert {"llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b", "mixtral-8x7b"} <= set(MODELS)
    for gpu in GPUS.values():
        assert gpu.source and gpu.long_name
    for model in MODELS.values():
        assert model.source and "/" in model.hf_id


def test_gpu_datasheet_figures() -> None:
    h100 = GPUS["H100"]
    assert h100.bf16_flops == 989e12  # 1,979 TFLOPS with sparsity / 2
    assert h100.hbm_bandwidth == 3.35e12
    assert h100.memory_bytes == 81559 * 2**20  # nvidia-smi total, ~79.6 GiB
    assert h100.interconnect_bandwidth == 450e9  # NVLink 900 GB/s both directions / 2
    assert GPUS["H200"].hbm_bandwidth == 4.8e12
    assert GPUS["A100"].bf16_flops == 312e12
    assert GPUS["A100"].hbm_bandwidth == 2.039e12
    assert GPUS["L40S"].bf16_flops == 362.05e12
    assert GPUS["L40S"].interconnect_bandwidth == 32e9  # PCIe Gen4 x16: 64 GB/s / 2
    assert GPUS["L4"].bf16_flops == 121e12
    assert GPUS["L4"].hbm_bandwidth == 300e9
    # The SXM parts are joined by NVLink; the L40S and L4 only by PCIe.
    assert {name: gpu.link for name, gpu in GPUS.items()} == {
        "H100": "nvlink",
        "H200": "nvlink",
        "A100": "nvlink",
        "L40S": "pcie",
        "L4": "pcie",
    }
    assert (GPUS["H100"].link_name, GPUS["L4"].link_name) == ("NVLink", "PCIe")


def test_a_gpu_with_an_unknown_link_is_refused() -> None:
    with pytest.raises(ValueError, match="link must be one of nvlink, pcie"):
        dataclasses.replace(GPUS["L4"], link="infiniband")


def test_prices_are_instance_price_over_gpu_count() -> None:
    assert GPUS["H100"].price_per_hour == pytest.approx(6.88)  # p5.48xlarge 55.04 / 8
    assert GPUS["H200"].price_per_hour == pytest.approx(7.912)  # p5en.48xlarge 63.296 / 8
    assert GPUS["A100"].price_per_hour == pytest.approx(3.43088125)  # p4de 27.44705 / 8
    assert GPUS["L40S"].price_per_hour == pytest.approx(1.861)  # g6e.xlarge, one GPU
    assert GPUS["L4"].price_per_hour == pytest.approx(0.8048)  # g6.xlarge, one GPU


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # 2 (K and V) * layers * kv_heads * head_dim * 2 bytes
        ("llama-3.1-8b", 131072),  # 2 * 32 * 8 * 128 * 2
        ("llama-3.1-70b", 327680),  # 2 * 80 * 8 * 128 * 2
        ("qwen2.5-7b", 57344),  # 2 * 28 * 4 * 128 * 2
        ("mixtral-8x7b", 131072),  # 2 * 32 * 8 * 128 * 2
    ],
)
def test_kv_bytes_per_token(name: str, expected: int) -> None:
    assert MODELS[name].kv_bytes_per_token == expected


def _dense_params(m: ModelSpec, *, qkv_bias: bool = False) -> int:
    # Untied embedding and LM head, q/k/v/o projections, SwiGLU MLP, two norms per
    # layer and a final norm.
    kv_width = m.num_kv_heads * m.head_dim
    attention = 2 * m.hidden_size * m.hidden_size + 2 * m.hidden_size * kv_width
    if qkv_bias:
        attention += m.hidden_size + 2 * kv_width
    per_layer = attention + 3 * m.hidden_size * m.intermediate_size + 2 * m.hidden_size
    return 2 * m.vocab_size * m.hidden_size + m.num_layers * per_layer + m.hidden_size


def test_dense_param_counts_match_config_shapes() -> None:
    assert _dense_params(MODELS["llama-3.1-8b"]) == MODELS["llama-3.1-8b"].num_params
    assert _dense_params(MODELS["llama-3.1-70b"]) == MODELS["llama-3.1-70b"].num_params
    qwen = MODELS["qwen2.5-7b"]
    assert _dense_params(qwen, qkv_bias=True) == qwen.num_params
    for name in ("llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b"):
        assert MODELS[name].num_active_params == MODELS[name].num_params


def test_mixtral_param_counts_match_config_shapes() -> None:
    m = MODELS["mixtral-8x7b"]
    expert = 3 * 4096 * 14336  # 176,160,768 per SwiGLU expert
    assert m.expert_params == 32 * 8 * expert  # 45,097,156,608
    attention = 2 * 4096 * 4096 + 2 * 4096 * 1024  # 41,943,040
    shared = 2 * 32000 * 4096 + 32 * (attention + 4096 * 8 + 2 * 4096) + 4096  # + router
    assert shared + m.expert_params == m.num_params == 46_702_792_704
    assert shared + 32 * 2 * expert == m.num_active_params == 12_879_925_248
    assert m.weight_bytes == 2 * 46_702_792_704
    assert MODELS["llama-3.1-8b"].expert_params == 0


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("H100", "H100"),
        ("h100", "H100"),
        ("H100-SXM", "H100"),
        ("h100_sxm", "H100"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("h200", "H200"),
        ("A100-SXM4-80GB", "A100"),
        ("a100_80gb", "A100"),
        ("l40s", "L40S"),
        ("  L4 ", "L4"),
    ],
)
def test_get_gpu_accepts_aliases(alias: str, canonical: str) -> None:
    assert get_gpu(alias) is GPUS[canonical]


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("llama-3.1-8b", "llama-3.1-8b"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
        ("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama-3.1-8b"),
        ("meta-llama/Llama-3.1-70B", "llama-3.1-70b"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b"),
        ("QWEN2.5-7B", "qwen2.5-7b"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
        ("mixtral_8x7b", "mixtral-8x7b"),
    ],
)
def test_get_model_accepts_aliases(alias: str, canonical: str) -> None:
    assert get_model(alias) is MODELS[canonical]


def test_hf_ids_resolve_to_their_entries() -> None:
    for model in MODELS.values():
        assert get_model(model.hf_id) is model


def test_unknown_names_raise_value_errors_listing_known_names() -> None:
    with pytest.raises(UnknownHardwareError) as gpu_error:
        get_gpu("B200")
    assert isinstance(gpu_error.value, ValueError)
    message = str(gpu_error.value)
    assert "B200" in message and "\n" not in message
    assert all(name in message for name in GPUS)

    with pytest.raises(UnknownModelError) as model_error:
        get_model("gpt-4o")
    assert isinstance(model_error.value, ValueError)
    message = str(model_error.value)
    assert "gpt-4o" in message and "\n" not in message
    assert all(name in message for name in MODELS)


def test_catalogue_is_read_only() -> None:
    with pytest.raises(TypeError):
        GPUS["X"] = GPUS["H100"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        GPUS["H100"].price_per_hour = 1.0  # type: ignore[misc]
    cheaper = dataclasses.replace(GPUS["H100"], price_per_hour=2.5)
    assert cheaper.price_per_hour == 2.5 and GPUS["H100"].price_per_hour == pytest.approx(6.88)


def test_model_spec_rejects_inconsistent_shapes() -> None:
    base = MODELS["llama-3.1-8b"]
    with pytest.raises(ValueError):
        dataclasses.replace(base, num_active_params=base.num_params + 1)
    with pytest.raises(ValueError):
        dataclasses.replace(base, num_experts=8, num_experts_per_token=9)
    with pytest.raises(ValueError):
        dataclasses.replace(base, num_kv_heads=5)  # 32 heads do not split in 5 groups
