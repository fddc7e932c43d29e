"""Usage queries over the wire and FOCUS export on the command line."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .conftest import ADMIN_KEY, KEY, KEY_B, MODEL, StartEmulator, StartGateway, client, ledger_rows

pytestmark = pytest.mark.integration


def get_usage(url: str, key: str, **params: str) -> httpx.Response:
    return httpx.get(url + "/v1/usage", params=params, headers={"authorization": f"Bearer {key}"})


def test_usage_by_run_and_focus_export(
    start_emulator: StartEmulator, start_gateway: StartGateway, database_url: str | None
) -> None:
    gateway = start_gateway(
        [start_emulator(time_scale=50.0).url],
        model="price: {input_per_1m: 1, output_per_1m: 3}",
        database_url=database_url,
    )
    for run, n in (("r1", 2), ("r2", 1)):
        for _ in range(n):
            client(gateway.url).chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=5,
                extra_body={"ignore_eos": True},
                extra_headers={"X-Inferplane-Workflow": "wf", "X-Inferplane-Run": run},
            )
    events = ledger_rows(gateway, expected=3)

    mine = get_usage(gateway.url, KEY, group_by="workflow,run")
    assert mine.status_code == 200
    by_run = {row["run"]: row for row in mine.json()["data"]}
    assert by_run["r1"]["requests"] == 2 and by_run["r2"]["requests"] == 1
    assert by_run["r1"]["output_tokens"] == 10
    # 1 micro-dollar per input token and 3 per output token, per request.
    prompt = events[0]["input_tokens"]
    assert Decimal(by_run["r2"]["cost_usd"]) == Decimal(prompt + 3 * 5) / 10**6

    assert get_usage(gateway.url, KEY, tenant="tenant-b").status_code == 403
    assert get_usage(gateway.url, KEY_B).json()["data"] == []  # sees only its own tenant
    assert get_usage(gateway.url, ADMIN_KEY, group_by="tenant").json()["data"][0]["requests"] == 3
    bad = get_usage(gateway.url, KEY, group_by="colour")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"
    assert get_usage(gateway.url, KEY, start="yesterday").status_code == 400

    config = next(gateway.data_dir.parent.glob(f"gateway-{gateway.url.rsplit(':', 1)[1]}.yaml"))
    exported = subprocess.run(
        [
            sys.executable,
            "-m",
            "inferplane",
            "usage",
            "export",
            "--format",
            "focus",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert {r["x_Run"] for r in rows} == {"r1", "r2"}
    assert sum(int(r["x_Requests"]) for r in rows) == 3
    assert {r["ServiceName"] for r in rows} == {"inferplane"}
    assert sum(float(r["BilledCost"]) for r in rows) == pytest.approx(
        sum(int(e["cost_micros"]) for e in events) / 10**6  # type: ignore[call-overload]
    )
    parquet = config.parent / "costs.parquet"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "inferplane",
            "usage",
            "export",
            "--config",
            str(config),
            "--out",
            str(parquet),
        ],
        check=True,
        capture_output=True,
    )
    table = pq.read_table(parquet)
    assert table.schema.field("BilledCost").type == pa.decimal128(20, 6)
    assert str(table.schema.field("ChargePeriodStart").type) == "timestamp[ms, tz=UTC]"
    assert sum(table.column("BilledCost").to_pylist()) == sum(
        Decimal(r["BilledCost"]) for r in rows
    )
    assert table.num_rows == len(rows)


def test_export_without_a_ledger_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'empty'}\nmodels: {{m: {{backends: [{{url: 'http://h:1'}}]}}}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "inferplane", "usage", "export", "--config", str(config)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "no ledger at" in result.stderr and "Traceback" not in result.stderr


def test_a_gateway_without_ledger_says_so(
    start_emulator: StartEmulator, start_gateway: StartGateway
) -> None:
    gateway = start_gateway([start_emulator(time_scale=50.0).url], top="usage_ledger: false")
    reply = client(gateway.url).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.choices[0].message.content
    refused = get_usage(gateway.url, KEY)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "ledger_disabled"
    assert not (gateway.data_dir / "ledger.sqlite3").exists()


def test_a_self_hosted_model_charges_the_replica_hours_it_used(
    start_emulator: StartEmulator, start_gateway: StartGateway
) -> None:
    gateway = start_gateway(
        [start_emulator(time_scale=5.0).url],
        model="pricing: per_hour",
        backend="price_per_hour: 36.0",  # a cent a second
    )
    reply = client(gateway.url).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=200,
        extra_body={"ignore_eos": True},
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 200
    (row,) = ledger_rows(gateway, expected=1)
    # Alone on its replica, the request pays for the time it held it.
    seconds = float(row["duration_s"])  # type: ignore[arg-type]
    assert int(row["cost_micros"]) == pytest.approx(10_000 * seconds, rel=0.1)  # type: ignore[call-overload]
