"""Config loading: the embedded default works, and every mistake is named with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferplane.config import ConfigError, EngineKind, load_config, parse_config

DIGEST = "ab" * 32


def test_embedded_default_runs_two_emulated_replicas() -> None:
    config = load_config()
    backends = config.models["llama-3.1-8b"].backends
    assert [b.engine for b in backends] == [EngineKind.EMULATED] * 2
    assert config.gateway.port == 8080
    assert "demo" in config.tenants


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as failed:
        parse_config(text, "gw.yaml")
    return str(failed.value).splitlines()


def test_each_problem_names_file_line_and_key() -> None:
    text = """gateway:
  port: 99999
models:
  a:
    backends:
      - url: ftp://x
        colour: blue
"""
    assert errors_of(text) == [
        "gw.yaml:2: gateway.port: Input should be less than or equal to 65535",
        "gw.yaml:6: models.a.backends.0.url: must be an http(s) URL with a host, got 'ftp://x'",
        "gw.yaml:7: models.a.backends.0.colour: unknown key",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models: [1", "gw.yaml:1: invalid YAML"),
        ("- a\n- b\n", "gw.yaml:1: the config must be a mapping"),
        ("models: {}", "gw.yaml:1: models: Dictionary should have at least 1 item"),
        (
            "models:\n  a:\n    backends:\n      - url: http://h:1\n        engine: emulated\n",
            "gw.yaml:4: models.a.backends.0: an emulated backend needs 'gpu'",
        ),
        (
            "models:\n  a: {backends: [{url: 'http://h:1'}]}\n  a: {backends: []}\n",
            "gw.yaml: 3: models: duplicate key 'a'",
        ),
        (
            f"models:\n  a: {{backends: [{{url: 'http://h:1'}}]}}\n"
            f"tenants:\n  t:\n    keys: [{{name: k, sha256: {DIGEST}}}, "
            f"{{name: k2, sha256: {DIGEST}}}]\n",
            "every key must be distinct",
        ),
        (
            "models:\n  a: {backends: [{url: 'http://h:1'}]}\ntenants:\n  t: {models: [b]}\n",
            "tenant 't' allows unknown models ['b']",
        ),
        (
            "models:\n  a: {backends: [{url: 'http://h:1'}]}\nadmin_key_sha256: secret\n",
            "gw.yaml:3: admin_key_sha256: must be the 64 lowercase hex digits",
        ),
        (
            "models:\n  a: {backends: [{url: 'http://h:1'}]}\n"
            "tenants:\n  t: {budget: {wall_time_s: 60}}\n",
            "budget: wall_time_s applies to runs only (run_budget)",
        ),
        (
            "models:\n  a: {backends: [{url: 'http://h:1'}]}\ndatabase_url: mysql://x/y\n",
            "gw.yaml:3: database_url: must be a postgresql:// URL, got scheme 'mysql'",
        ),
        (
            "models:\n  a: {backends: [{url: 'http://h:1'}]}\nusage_ledger: false\n"
            "tenants:\n  t: {run_budget: {calls: 3}}\n",
            "tenant 't' has budgets, which need the usage ledger",
        ),
        (
            # A "/" would make its budget scopes read as another tenant's.
            "models:\n  a: {backends: [{url: 'http://h:1'}]}\ntenants:\n  acme/eu: {}\n",
            "tenants.acme/eu.[key]: String should match pattern",
        ),
        (
            f"models:\n  a: {{backends: [{{url: 'http://h:1'}}]}}\n"
            f"tenants:\n  t:\n    keys: [{{name: ci/bot, sha256: {DIGEST}}}]\n",
            "keys.0.name: String should match pattern",
        ),
        (
            "models:\n  a: {backends: [{url: 'http://h:1'}]}\n"
            "tenants:\n  t: {budget: {total_tokens: 1000000000000000000000000000000}}\n",
            "total_tokens: Input should be less than or equal to 1000000000000000",
        ),
    ],
)
def test_bad_configs_are_refused_with_a_reason(text: str, expected: str) -> None:
    assert expected in "\n".join(errors_of(text))


def test_unreadable_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config: No such file"):
        load_config(tmp_path / "missing.yaml")


def test_backend_defaults() -> None:
    config = parse_config("models:\n  m:\n    backends:\n      - url: http://10.0.0.5:8000/\n")
    backend = config.models["m"].backends[0]
    assert backend.url == "http://10.0.0.5:8000"
    assert backend.label == "10.0.0.5:8000"
    assert backend.engine is EngineKind.OPENAI


def test_cached_prompt_tokens_have_their_own_price() -> None:
    from decimal import Decimal

    from inferplane.config import Pricing

    price = Pricing(
        input_per_1m=Decimal("0.5"), output_per_1m=Decimal(2), cached_input_per_1m=Decimal("0.05")
    )
    # 1000 prompt tokens of which 800 cached, 100 output: 200*0.5 + 800*0.05 + 100*2 = 340.
    assert price.cost_micros(1000, 100, cached_tokens=800) == 340
    assert Pricing(input_per_1m=Decimal("0.5")).cost_micros(1000, 0, cached_tokens=800) == 500
