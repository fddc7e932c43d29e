"""Scheduling keys: SLO class weights, TTFT targets and hedging; token capacity; hedge bounds."""

from __future__ import annotations

import pytest

from inferplane.config import ConfigError, load_config, parse_config

MODEL = "models:\n  m:\n    backends:\n      - url: http://h:1\n"


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as failed:
        parse_config(text, "gw.yaml")
    return str(failed.value).splitlines()


def test_default_classes_have_ttft_targets_and_no_hedging() -> None:
    classes = load_config().slo_classes
    assert {n: (c.ttft_s, c.weight, c.hedge) for n, c in classes.items()} == {
        "realtime": (0.5, 1.0, False),
        "interactive": (2.0, 1.0, False),
        "batch": (None, 1.0, False),
    }
    backend = load_config().models["llama-3.1-8b"].backends[0]
    assert backend.max_tokens_in_flight is None


def test_scheduling_keys_parse() -> None:
    config = parse_config(
        "slo_classes:\n"
        "  voice: {priority: 0, max_queue_s: 0.2, ttft_s: 0.3, hedge: true}\n"
        "  chat: {priority: 1, max_queue_s: 2, weight: 3}\n"
        "  chat-free: {priority: 1, max_queue_s: 2}\n"
        "default_slo_class: chat\n"
        "gateway: {hedge_min_delay_s: 0.05, hedge_max_delay_s: 1, hedge_min_samples: 10}\n"
        "models:\n  m:\n    backends:\n"
        "      - {url: 'http://h:1', max_tokens_in_flight: 100000}\n"
        "      - {url: 'http://h:2', max_tokens_in_flight: auto, max_concurrency: auto}\n"
    )
    assert config.slo_classes["voice"].hedge and config.slo_classes["chat"].weight == 3
    assert [b.max_tokens_in_flight for b in config.models["m"].backends] == [100000, "auto"]
    assert config.gateway.hedge_min_samples == 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "slo_classes:\n  a: {priority: 0, max_queue_s: 1, weight: 0}\n" + MODEL,
            "gw.yaml:2: slo_classes.a.weight: Input should be greater than 0",
        ),
        (
            "slo_classes:\n  a: {priority: 0, max_queue_s: 1, ttft_s: -1}\n" + MODEL,
            "gw.yaml:2: slo_classes.a.ttft_s: Input should be greater than 0",
        ),
        (
            "slo_classes:\n  a: {priority: 0, max_queue_s: 1, hedge: maybe}\n" + MODEL,
            "gw.yaml:2: slo_classes.a.hedge: Input should be a valid boolean",
        ),
        (
            MODEL + "        max_tokens_in_flight: 0\n",
            "gw.yaml:5: models.m.backends.0.max_tokens_in_flight: must be a whole number of "
            "tokens >= 1, or 'auto', got 0",
        ),
        (
            MODEL + "        max_tokens_in_flight: lots\n",
            "gw.yaml:5: models.m.backends.0.max_tokens_in_flight: must be a whole number of "
            "tokens >= 1, or 'auto', got 'lots'",
        ),
        (
            MODEL + "        max_concurrency: true\n",
            "gw.yaml:5: models.m.backends.0.max_concurrency: must be a whole number of "
            "requests >= 1, or 'auto', got True",
        ),
        (
            "gateway:\n  hedge_min_delay_s: 3\n  hedge_max_delay_s: 1\n" + MODEL,
            "gw.yaml:1: gateway: hedge_min_delay_s (3) is above hedge_max_delay_s (1)",
        ),
    ],
)
def test_bad_scheduling_keys_are_refused_with_file_line_and_key(text: str, expected: str) -> None:
    [error] = errors_of(text)
    assert error.startswith(expected)
