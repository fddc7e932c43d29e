"""The command line as a user meets it: `inferplane up`, and one-line errors."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from inferplane import launcher
from inferplane.gateway import hash_key

from .conftest import KEY, MODEL, StartEmulator, client

HI = [{"role": "user", "content": "hi"}]

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "inferplane"]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_starts_the_fleet_serves_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    held = [socket.socket() for _ in range(3)]  # bound together: three different ports
    for sock in held:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in held]
    for sock in held:
        sock.close()
    config = tmp_path / "fleet.yaml"
    config.write_text(
        f"""
gateway: {{port: {ports[0]}}}
data_dir: {tmp_path / "data"}
models:
  {MODEL}:
    backends:
      - {{url: "http://127.0.0.1:{ports[1]}", engine: emulated, gpu: H100, time_scale: 20}}
      - {{url: "http://127.0.0.1:{ports[2]}", engine: emulated, gpu: A100, time_scale: 20}}
tenants:
  demo:
    keys: [{{name: demo, sha256: 548770f97f4e507a56b9212560d6dccae77c2853dba551cd2adbb7faebd32bbc}}]
"""
    )
    up = subprocess.Popen(
        [*CLI, "up", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        gateway = launcher.Child("up", f"http://127.0.0.1:{ports[0]}", up)  # type: ignore[arg-type]
        launcher.wait_healthy([gateway], timeout_s=30)
        demo = client(gateway.url, key="sk-inferplane-demo")
        for _ in range(2):  # one request per replica
            reply = demo.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            assert reply.usage is not None and reply.usage.completion_tokens <= 4
        demo.close()
        assert all(_port_open(p) for p in ports)
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=20)
    finally:
        if up.poll() is None:
            up.kill()
    # uvicorn re-raises the SIGINT once drained: exit 130, the shell's code for Ctrl-C.
    assert up.returncode in (0, 130), output
    assert "stopped." in output
    assert "Traceback" not in output
    assert "sk-inferplane-demo" in output  # the copy-paste example
    assert (tmp_path / "data" / "logs").is_dir()
    assert not any(_port_open(p) for p in ports)  # replicas gone with the gateway


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--config", "/nonexistent.yaml"], "cannot read config"),
        (["engine", "emulate", "--gpu", "TPUv9"], "TPUv9"),
        (["engine", "emulate", "--model", "llama-3.1-70b", "--gpu", "L4"], "tp"),
        (["bench", "overhead", "--scenario", "nope"], "unknown scenario nope"),
        # Options checked before any work, each with its range.
        (["bench", "twin", "--load", "1e9"], "--load must be at most 10, got 1e+09"),
        (["bench", "twin", "--load", "nan"], "--load must be a number above 0"),
        (["bench", "twin", "--requests", "5"], "--requests must be at least 100, got 5"),
        (["bench", "twin", "--fleets", "8,0"], "--fleets: each fleet size must be at least 1"),
        (["bench", "twin", "--fleets", "8,x"], "--fleets takes replica counts separated by"),
        (["bench", "plan", "--workers", "-1"], "--workers must be at least 1, got -1"),
        (["plan", str(EXAMPLES / "plan-chat.yaml"), "--workers", "-3"], "--workers must be"),
        (["bench", "overhead", "--duration", "0"], "--duration must be a number above 0"),
        (["bench", "overhead", "-n", "0"], "--concurrency must be at least 1, got 0"),
        (["bench", "slo", "--loads", "1,-2"], "--loads: each load must be a number above 0"),
        (["bench", "slo", "--replicas", "0"], "--replicas must be at least 1"),
        (["bench", "budgets", "--rounds", "0"], "--rounds must be at least 1"),
    ],
)
def test_user_errors_are_one_line_without_traceback(argv: list[str], message: str) -> None:
    result = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1


def test_an_out_through_a_file_is_one_line_before_any_work(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("")
    cases = [
        (["simulate", str(EXAMPLES / "twin-chat-fleet.yaml"), "--out", str(taken), "-q"], taken),
        (["plan", str(EXAMPLES / "plan-chat.yaml"), "--out", str(taken / "sub"), "-q"], taken),
        (
            ["bench", "twin", "--fleets", "1", "--requests", "100", "--out", str(taken / "x.json")],
            taken,
        ),
    ]
    for argv, blocking in cases:
        result = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, result.stderr
        out = argv[argv.index("--out") + 1]
        assert result.stderr == f"error: --out {out}: {blocking} is a file, not a folder\n"
        assert result.stdout == ""  # nothing ran
    folder = subprocess.run(
        [*CLI, "bench", "twin", "--out", str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert folder.returncode == 2
    assert folder.stderr == f"error: --out {tmp_path}: is a folder; give the path of a file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_usage_of_a_ledger_no_gateway_has_migrated_is_one_line(tmp_path: Path) -> None:
    # An empty file where the ledger should be (or one a newer gateway has yet to migrate).
    (tmp_path / "ledger.sqlite3").write_bytes(b"")
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"data_dir: {tmp_path}\nmodels:\n  m: {{backends: [{{url: 'http://h:1'}}]}}\n"
    )
    for verb in (["summary"], ["export", "--format", "events"], ["export"]):
        result = subprocess.run(
            [*CLI, "usage", *verb, "--config", str(config)], capture_output=True, text=True
        )
        assert result.returncode == 2
        assert result.stderr.startswith("error: cannot read the usage ledger at ")
        assert "no such table: usage_events" in result.stderr
        assert result.stderr.count("\n") == 1


def test_two_gateways_of_one_config_on_other_ports_share_its_budget(
    tmp_path: Path, processes: list[launcher.Child], start_emulator: StartEmulator
) -> None:
    # Each names its budget leases after the port it serves on: the second one's start
    # (which takes back what a dead process of its own name held) left the first's alone.
    replica = start_emulator(time_scale=1.0)
    config = tmp_path / "gw.yaml"
    config.write_text(
        f"""
data_dir: {tmp_path / "data"}
gateway: {{port: {launcher.free_port()}}}
models:
  {MODEL}: {{backends: [{{url: "{replica.url}"}}]}}
tenants:
  tenant-a:
    budget: {{calls: 2}}
    keys: [{{name: a, sha256: {hash_key(KEY)}}}]
"""
    )
    gateways = []
    for name in ("a", "b"):
        port = launcher.free_port()
        argv = [*CLI, "serve", "--config", str(config), "--port", str(port)]
        child = launcher.start(
            f"gateway-{name}", f"http://127.0.0.1:{port}", argv, log_dir=tmp_path
        )
        processes.append(child)
        launcher.wait_healthy([child])
        gateways.append(child)
        if name == "a":  # the whole budget held by two long streams on the first
            streams = [
                client(child.url).chat.completions.create(
                    model=MODEL,
                    messages=HI,
                    max_tokens=2000,
                    stream=True,
                    extra_body={"ignore_eos": True},
                )
                for _ in range(2)
            ]
            for stream in streams:
                next(iter(stream))
    with pytest.raises(openai.RateLimitError):
        client(gateways[1].url).chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
    for stream in streams:
        stream.close()


def test_config_check_reports_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  m:\n    backends:\n      - url: http://h:1\n        colour: blue\n")
    result = subprocess.run([*CLI, "config", "check", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert f"{bad}:5: models.m.backends.0.colour: unknown key" in result.stderr


def test_up_refuses_a_taken_port_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "fleet.yaml"
        config.write_text(
            f"gateway: {{port: {launcher.free_port()}}}\ndata_dir: {tmp_path / 'data'}\n"
            f"models:\n  {MODEL}:\n    backends:\n"
            f"      - {{url: 'http://127.0.0.1:{port}', engine: emulated, gpu: H100}}\n"
        )
        result = subprocess.run(
            [*CLI, "up", "--config", str(config)], capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 2
    assert f"127.0.0.1:{port} (emulated replica" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "data").exists()
