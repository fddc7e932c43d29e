"""Upstream failures end as clean OpenAI errors: no hang, no crash, no half-truths."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest

from .conftest import MODEL, DeadUrl, Gateway, StartEmulator, StartGateway, client

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "hi"}]


def test_all_backends_down_is_502_at_once(start_gateway: StartGateway, dead_url: DeadUrl) -> None:
    gateway = start_gateway([dead_url(), dead_url()])
    # Refused connections fail fast: a hang would end in the client's timeout instead.
    with pytest.raises(openai.APIStatusError) as down:
        client(gateway.url).with_options(timeout=5).chat.completions.create(
            model=MODEL, messages=HI, max_tokens=1
        )
    assert down.value.status_code == 502
    assert down.value.code == "upstream_unreachable"
    assert httpx.get(gateway.url + "/health").status_code == 200


def test_a_refusing_backend_is_skipped(
    start_emulator: StartEmulator, start_gateway: StartGateway, dead_url: DeadUrl
) -> None:
    gateway = start_gateway([dead_url(), start_emulator().url])
    for _ in range(6):
        reply = client(gateway.url).chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
        assert reply.choices[0].message.content


def test_backend_500_becomes_502(
    start_emulator: StartEmulator, start_gateway: StartGateway
) -> None:
    gateway = start_gateway([start_emulator("--error-rate", "1").url])
    with pytest.raises(openai.APIStatusError) as failed:
        client(gateway.url).chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
    assert failed.value.status_code == 502
    assert failed.value.code == "upstream_error"
    assert "injected fault" in failed.value.message


def test_backend_killed_mid_stream_ends_the_stream_with_an_error_event(
    start_emulator: StartEmulator, start_gateway: StartGateway
) -> None:
    replica = start_emulator(time_scale=1.0)
    gateway = start_gateway([replica.url])
    stream = client(gateway.url).chat.completions.create(
        model=MODEL, messages=HI, max_tokens=5000, stream=True, extra_body={"ignore_eos": True}
    )
    received = 0
    with pytest.raises(openai.APIError) as broken:
        for _chunk in stream:
            received += 1
            if received == 5:
                replica.kill(signal.SIGKILL)
    assert received >= 5
    assert "mid-stream" in broken.value.message
    assert httpx.get(gateway.url + "/health").status_code == 200


class _Misbehaving(BaseHTTPRequestHandler):
    """A broken third-party model server: what it does depends on the request path."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        if self.path.endswith("/chat/completions") and self.server.mode == "garbage":  # type: ignore[attr-defined]
            self._sse(b'data: {"choices": [{"delta": {"content": "ok"}}]}\n\ndata: {oops\n\n')
        elif self.server.mode == "stall-after-headers":  # type: ignore[attr-defined]
            self._sse(b'data: {"choices": [{"delta": {"content": "ok"}}]}\n\n')
            time.sleep(6)
        elif self.server.mode == "stall":  # type: ignore[attr-defined]
            time.sleep(6)
        elif self.server.mode == "truncated":  # type: ignore[attr-defined]
            self._sse(b'data: {"choices": [{"delta": {"content": "ok"}}]}\n\n')
        else:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", "9")
            self.end_headers()
            self.wfile.write(b"not json!")

    def _sse(self, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def broken_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    server.daemon_threads = True
    server.mode = "garbage"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    assert isinstance(host, str)
    return f"http://{host}:{port}"


def _stream_error(gateway: Gateway) -> openai.APIError:
    stream = client(gateway.url).chat.completions.create(model=MODEL, messages=HI, stream=True)
    with pytest.raises(openai.APIError) as failed:
        for _ in stream:
            pass
    return failed.value


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        ("garbage", "upstream_malformed_stream"),
        ("truncated", "upstream_incomplete_stream"),
        ("stall-after-headers", "upstream_timeout"),
    ],
)
def test_broken_streams_end_with_a_specific_error_event(
    broken_server: ThreadingHTTPServer, start_gateway: StartGateway, mode: str, code: str
) -> None:
    broken_server.mode = mode  # type: ignore[attr-defined]
    gateway = start_gateway([_url(broken_server)])
    error = _stream_error(gateway)
    assert error.code == code


def test_non_json_answer_is_502(
    broken_server: ThreadingHTTPServer, start_gateway: StartGateway
) -> None:
    broken_server.mode = "not-json"  # type: ignore[attr-defined]
    gateway = start_gateway([_url(broken_server)])
    with pytest.raises(openai.APIStatusError) as failed:
        client(gateway.url).completions.create(model=MODEL, prompt="hi")
    assert failed.value.status_code == 502
    assert failed.value.code == "upstream_malformed_response"


def test_silent_backend_is_504_after_the_read_timeout(
    broken_server: ThreadingHTTPServer, start_gateway: StartGateway
) -> None:
    broken_server.mode = "stall"  # type: ignore[attr-defined]
    gateway = start_gateway([_url(broken_server)])  # read_timeout_s: 3
    with pytest.raises(openai.APIStatusError) as failed:
        client(gateway.url).chat.completions.create(model=MODEL, messages=HI)
    assert failed.value.status_code == 504
    assert failed.value.code == "upstream_timeout"


def test_gateway_survives_a_client_that_hangs_up(
    start_emulator: StartEmulator, start_gateway: StartGateway
) -> None:
    replica = start_emulator(time_scale=1.0)
    gateway = start_gateway([replica.url])
    host, port = gateway.url.removeprefix("http://").split(":")
    body = (
        b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], '
        b'"max_tokens": 3000, "stream": true, "ignore_eos": true}' % MODEL.encode()
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
            b"authorization: Bearer sk-test-tenant-a\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    # The replica is told too: its running request is aborted, freeing its KV cache.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        metrics = httpx.get(replica.url + "/metrics").text
        if 'vllm:num_requests_running{model_name="llama-3.1-8b"} 0.0' in metrics:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the replica kept generating for a client that left")
    assert httpx.get(gateway.url + "/health").status_code == 200
