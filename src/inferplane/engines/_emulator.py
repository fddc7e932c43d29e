"""An OpenAI-compatible server whose timing is an emulated GPU replica (vLLM-like).

It answers like vLLM: same routes, same streaming chunks, same error bodies and
same ``/metrics`` names; tokens are deterministic filler text and arrive when
the :class:`EngineCore` says the modelled GPU would have produced them.

vLLM extensions honoured: ``ignore_eos`` (generate exactly ``max_tokens``).
Without it the natural length of an answer is a deterministic function of
the prompt (``natural_output_tokens``), capped by ``max_tokens``.

Automatic prefix caching: the prompt is cut into tokens by the counting rule of
``perf/_tokens.py`` and every full KV block gets a chained hash of its text
(``prompt_block_hashes``), so requests sharing a prompt prefix (a system prompt,
an earlier conversation) share cached blocks in the engine, as in vLLM. Answers
report the hit as ``usage.prompt_tokens_details.cached_tokens``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import random
import struct
import time
import uuid
from bisect import bisect_left
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, cast

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from inferplane.asgi import EventStreamResponse, JsonApp
from inferplane.engines._core import EngineCore, EngineLimits, EngineRequest
from inferplane.engines._live import LiveEngine, Stream
from inferplane.engines._metrics import EngineMetrics
from inferplane.perf import (
    CHARS_PER_TOKEN,
    NON_TEXT_PART_TOKENS,
    PerfModel,
    count_chat_tokens,
    count_text_tokens,
    filler_text,
    get_gpu,
    get_model,
    text_pieces,
    text_seed,
)
from inferplane.wire import DONE, SSE_HEADERS, OpenAIError, sse_data

__all__ = [
    "EmulatorSettings",
    "create_emulator_app",
    "natural_output_tokens",
    "prompt_block_hashes",
]


@dataclass(frozen=True)
class EmulatorSettings:
    gpu: str = "H100"
    model: str = "llama-3.1-8b"
    tp: int = 1
    time_scale: float = 1.0
    served_model_name: str | None = None  # defaults to the catalogue name
    limits: EngineLimits = field(default_factory=EngineLimits)
    # Fault injection: this fraction of generation requests gets an HTTP 500, chosen by a
    # seeded generator so a run is repeatable. For failover and ejection tests.
    error_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be within [0, 1], got {self.error_rate}")


def natural_output_tokens(seed: int) -> int:
    """Length an answer has when nothing caps it: 16..527 tokens, fixed per prompt."""
    return 16 + seed % 512


# Stand-ins for the tokens count_chat_tokens adds, CHARS_PER_TOKEN bytes per token:
# 3 opening each message, 1 for a name, 3 priming the reply.
_MESSAGE_MARK = b"<|start|>msg"
_NAME_MARK = b"<nm>"
_REPLY_MARK = b"<|assistant|"


class _Pieces:
    """A prompt as byte pieces that each count ``ceil(len / CHARS_PER_TOKEN)`` tokens:
    the rule of ``perf/_tokens.py``, so the tokens here are the tokens counted."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.sizes: list[int] = []

    def text(self, text: str) -> None:
        pieces = text_pieces(text)
        if text.isascii():
            self.data.append("".join(pieces).encode("ascii"))
            self.sizes += map(len, pieces)
        else:
            encoded = [piece.encode("utf-8", "surrogatepass") for piece in pieces]
            self.data += encoded
            self.sizes += map(len, encoded)

    def special(self, data: bytes, num_tokens: int) -> None:
        """``num_tokens`` tokens that are not text, told apart by ``data``."""
        assert len(data) <= num_tokens * CHARS_PER_TOKEN
        self.data.append(data.ljust(num_tokens * CHARS_PER_TOKEN, b"\0"))
        self.sizes.append(num_tokens * CHARS_PER_TOKEN)

    def value(self, value: object) -> None:
        # As perf/_tokens.py counts: strings, and the strings inside containers.
        if isinstance(value, str):
            self.text(value)
        elif isinstance(value, Mapping):
            for item in value.values():
                self.value(item)
        elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
            for item in value:
                self.value(item)

    def content(self, content: object) -> None:
        if not isinstance(content, Sequence) or isinstance(content, str):
            self.value(content)
            return
        for part in content:
            if isinstance(part, Mapping) and part.get("type") not in (None, "text"):
                digest = hashlib.blake2b(orjson.dumps(part), digest_size=16).digest()
                self.special(digest, NON_TEXT_PART_TOKENS)
            elif isinstance(part, Mapping):
                self.value(part.get("text", ""))
            else:
                self.value(part)

    def block_hashes(self, block_size: int, limit: int) -> tuple[int, ...]:
        """Chained hashes of the first ``limit`` full blocks: block j's is BLAKE2b of
        block j - 1's and of block j's bytes, so it stands for the whole prefix."""
        if not self.sizes:
            return ()
        data = b"".join(self.data)
        token_ends = list(
            accumulate((size + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN for size in self.sizes)
        )
        byte_starts = [0, *accumulate(self.sizes)]
        hashes: list[int] = []
        previous, begin = b"", 0
        for j in range(1, min(limit, token_ends[-1] // block_size) + 1):
            boundary = j * block_size  # tokens before the end of block j
            i = bisect_left(token_ends, boundary)  # the piece holding that last token
            inside = boundary - (token_ends[i - 1] if i else 0)
            end = byte_starts[i] + min(self.sizes[i], inside * CHARS_PER_TOKEN)
            digest = hashlib.blake2b(previous, digest_size=8)
            digest.update(data[begin:end])
            previous, begin = digest.digest(), end
            hashes.append(int.from_bytes(previous, "big"))
        return tuple(hashes)


def prompt_block_hashes(
    prompt: str | Sequence[object], block_size: int, num_prompt_tokens: int
) -> tuple[int, ...]:
    """The hash chain of a prompt's full KV blocks, for the engine's prefix cache.

    ``prompt`` is a completion prompt (text or token ids) or chat messages, rendered in
    order as ``count_chat_tokens`` counts them, so a shared system prompt is a shared
    prefix. Deterministic across processes (BLAKE2b, not the salted ``hash``); at most
    ``num_prompt_tokens // block_size`` hashes."""
    pieces = _Pieces()
    if isinstance(prompt, str):
        pieces.text(prompt)
    elif all(isinstance(token, int) for token in prompt):
        for token in cast("Sequence[int]", prompt):
            pieces.special((token & 0xFFFFFFFF).to_bytes(4, "big"), 1)
    else:
        for message in cast("Sequence[Mapping[str, object]]", prompt):
            pieces.special(_MESSAGE_MARK, 3)
            for key, value in message.items():
                if key == "content":
                    pieces.content(value)
                else:
                    pieces.value(value)
                if key == "name":
                    pieces.special(_NAME_MARK, 1)
        pieces.special(_REPLY_MARK, 3)
    return pieces.block_hashes(block_size, num_prompt_tokens // block_size)


class _Emulator:
    def __init__(self, settings: EmulatorSettings) -> None:
        spec = get_model(settings.model)
        self.perf = PerfModel(get_gpu(settings.gpu), spec, tp=settings.tp)
        self.spec = spec
        self.name = settings.served_model_name or spec.name
        self.aliases = {self.name, spec.name, spec.hf_id}
        core = EngineCore(self.perf, settings.limits)
        self.limits = settings.limits
        self.metrics = EngineMetrics(core, self.name)
        self.engine = LiveEngine(core, settings.time_scale, observer=self)
        self.error_rate = settings.error_rate
        self._faults = random.Random(settings.seed)

    # -- what the engine reports (LiveEngine's Observer) ------------------------

    def admitted(self, stream: Stream, t: float) -> None:
        self.metrics.queue_time.observe(t - stream.arrival)

    def produced(self, stream: Stream, t: float, num_tokens: int) -> None:
        if stream.last_token_time is None:
            self.metrics.ttft.observe(t - stream.arrival)
        else:
            self.metrics.itl.observe((t - stream.last_token_time) / num_tokens)
        self.metrics.generation_tokens.inc(num_tokens)

    def preempted(self, stream: Stream, t: float) -> None:
        self.metrics.preemptions.inc()

    def finished(self, stream: Stream, t: float) -> None:
        self.metrics.e2e.observe(t - stream.arrival)

    # -- requests ----------------------------------------------------------

    def _check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if not isinstance(model, str):
            raise OpenAIError(
                400, "'model' is required and must be a string", "invalid_value", param="model"
            )
        if model not in self.aliases:
            raise OpenAIError(
                404, f"The model `{model}` does not exist.", "model_not_found", param="model"
            )

    def _plan(self, body: dict[str, Any], num_prompt_tokens: int, seed: int) -> tuple[int, str]:
        """Output length and finish reason for a request."""
        if body.get("n") not in (None, 1):  # null is the default, as in vLLM
            raise OpenAIError(
                400, "the emulated engine supports n=1 only", "invalid_value", param="n"
            )
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        room = self.spec.max_context - num_prompt_tokens
        if room < 1:  # vLLM's words for a prompt that leaves no room to answer
            raise OpenAIError(
                400,
                f"This model's maximum context length is {self.spec.max_context} tokens. "
                f"However, your request has {num_prompt_tokens} input tokens. Please reduce "
                "the length of the input messages.",
                "context_length_exceeded",
                param="messages",
            )
        if max_tokens is None:
            max_tokens = room
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise OpenAIError(
                400, "max_tokens must be a positive integer", "invalid_value", param="max_tokens"
            )
        if max_tokens > room:
            raise OpenAIError(
                400,
                f"This model's maximum context length is {self.spec.max_context} tokens. "
                f"However, you requested {num_prompt_tokens + max_tokens} tokens "
                f"({num_prompt_tokens} in the messages, {max_tokens} in the completion).",
                "context_length_exceeded",
                param="max_tokens",
            )
        natural = max_tokens if body.get("ignore_eos") else natural_output_tokens(seed)
        if natural >= max_tokens:
            return max_tokens, "length"
        return natural, "stop"

    def _block_hashes(self, prompt: str | list[Any], num_prompt_tokens: int) -> tuple[int, ...]:
        block_size = self.limits.block_size
        if not self.limits.enable_prefix_caching or num_prompt_tokens < block_size:
            return ()  # no cache to look up, or not one full block to find there
        return prompt_block_hashes(prompt, block_size, num_prompt_tokens)

    def _submit(
        self, num_prompt_tokens: int, num_output_tokens: int, block_hashes: tuple[int, ...] = ()
    ) -> Stream:
        rid = uuid.uuid4().hex
        request = EngineRequest(rid, num_prompt_tokens, num_output_tokens, block_hashes)
        try:
            stream = self.engine.submit(request)
        except ValueError as exc:  # larger than the whole KV cache
            raise OpenAIError(400, str(exc), "context_length_exceeded") from exc
        self.metrics.prompt_tokens.inc(num_prompt_tokens)
        return stream

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def _generate(self, request: Request, *, chat: bool) -> Response:
        if self.error_rate and self._faults.random() < self.error_rate:
            raise OpenAIError(500, "injected fault (--error-rate)", "injected_fault")
        body = await _json_body(request)
        self._check_model(body)
        if chat:
            messages = body.get("messages")
            if (
                not isinstance(messages, list)
                or not messages
                or not all(isinstance(m, dict) for m in messages)
            ):
                raise OpenAIError(
                    400,
                    "'messages' must be a non-empty array of objects",
                    "invalid_value",
                    param="messages",
                )
            num_prompt = count_chat_tokens(messages)
            seed = text_seed(orjson.dumps(messages).decode())
            hashes = self._block_hashes(messages, num_prompt)
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
                num_prompt, seed = len(prompt), text_seed(str(prompt))
            elif isinstance(prompt, str) and prompt:
                num_prompt, seed = count_text_tokens(prompt), text_seed(prompt)
            else:
                raise OpenAIError(
                    400,
                    "'prompt' must be a non-empty string or token array",
                    "invalid_value",
                    param="prompt",
                )
            hashes = self._block_hashes(prompt, num_prompt)
        num_output, finish = self._plan(body, num_prompt, seed)
        stream = self._submit(max(num_prompt, 1), num_output, hashes)
        reply = _Reply(self.name, chat, num_prompt, seed)
        if body.get("stream"):
            options = body.get("stream_options") or {}
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return EventStreamResponse(
                self._stream(stream, reply, finish, include_usage),
                headers=SSE_HEADERS,
                on_abandon=lambda: self._cancel_unfinished(stream),
            )
        # vLLM aborts a whole-answer request whose client hung up; so does the emulator.
        generating = asyncio.ensure_future(_collect(stream, reply))
        hung_up = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait((generating, hung_up), return_when=asyncio.FIRST_COMPLETED)
        finally:
            hung_up.cancel()
            generating.cancel()
            self._cancel_unfinished(stream)
        if not generating.done() or generating.cancelled():
            return Response(status_code=499)  # nobody is there to read it
        self.metrics.success(finish)
        reply.num_cached = stream.num_cached_tokens
        return Response(orjson.dumps(reply.whole(finish)), media_type="application/json")

    async def _stream(
        self, stream: Stream, reply: _Reply, finish: str, include_usage: bool
    ) -> AsyncIterator[bytes]:
        try:
            if reply.chat:
                yield sse_data(reply.chunk({"role": "assistant", "content": ""}, None))
            while (n := await stream.queue.get()) is not None:
                yield sse_data(reply.delta(n, None))
            yield sse_data(reply.delta(0, finish))
            reply.num_cached = stream.num_cached_tokens
            if include_usage:
                yield sse_data(reply.usage_chunk())
            yield DONE
            self.metrics.success(finish)
        finally:
            self._cancel_unfinished(stream)

    def _cancel_unfinished(self, stream: Stream) -> None:
        # The client went away before the end: free the replica's KV cache, as vLLM aborts.
        if stream.request.request_id in self.engine.core:
            self.engine.cancel(stream.request.request_id)

    async def embeddings(self, request: Request) -> Response:
        """Deterministic unit vectors; the engine charges the prompt as one prefill."""
        body = await _json_body(request)
        self._check_model(body)
        inputs = body.get("input")
        if isinstance(inputs, str) or (
            isinstance(inputs, list) and inputs and all(isinstance(t, int) for t in inputs)
        ):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise OpenAIError(
                400, "'input' must be a non-empty string or array", "invalid_value", param="input"
            )
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise OpenAIError(
                400,
                "encoding_format must be 'float' or 'base64'",
                "invalid_value",
                param="encoding_format",
            )
        data = []
        num_prompt = 0
        for index, item in enumerate(inputs):
            if isinstance(item, str) and item:
                n, seed = count_text_tokens(item), text_seed(item)
            elif isinstance(item, list) and item and all(isinstance(t, int) for t in item):
                n, seed = len(item), text_seed(str(item))
            else:
                raise OpenAIError(
                    400,
                    f"input[{index}] must be a non-empty string or token array",
                    "invalid_value",
                    param="input",
                )
            stream = self._submit(n, 1)
            try:
                while await stream.queue.get() is not None:
                    pass
            finally:
                self._cancel_unfinished(stream)
            num_prompt += n
            vector = _unit_vector(seed, EMBEDDING_DIM)
            embedding: object = vector
            if encoding == "base64":
                embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        usage = {"prompt_tokens": num_prompt, "total_tokens": num_prompt}
        return Response(
            orjson.dumps({"object": "list", "data": data, "model": self.name, "usage": usage}),
            media_type="application/json",
        )

    async def models(self, request: Request) -> Response:
        card = {
            "id": self.name,
            "object": "model",
            "created": 0,
            "owned_by": "inferplane",
            "root": self.spec.hf_id,
            "max_model_len": self.spec.max_context,
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def health(self, request: Request) -> Response:
        return Response(b"", status_code=200)

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


EMBEDDING_DIM = 256


def _unit_vector(seed: int, dim: int) -> list[float]:
    rng = random.Random(seed)
    vector = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


class _Reply:
    """Builds the response objects of one request; text is filler seeded by the prompt."""

    __slots__ = ("chat", "created", "id", "model", "num_cached", "num_output", "num_prompt", "seed")

    def __init__(self, model: str, chat: bool, num_prompt: int, seed: int) -> None:
        self.model = model
        self.chat = chat
        self.num_prompt = num_prompt
        self.seed = seed
        self.num_output = 0
        self.num_cached = 0  # prompt tokens found in the prefix cache
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _envelope(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        obj = "chat.completion" if self.chat else "text_completion"
        if chunk and self.chat:
            obj = "chat.completion.chunk"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def chunk(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if self.chat:
            choice["delta"] = delta
        else:
            choice["text"] = delta.get("content", "")
        return self._envelope([choice], chunk=True)

    def delta(self, num_tokens: int, finish: str | None) -> dict[str, Any]:
        text = "".join(filler_text(self.seed, self.num_output, num_tokens))
        self.num_output += num_tokens
        return self.chunk({"content": text} if num_tokens else {}, finish)

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.num_prompt,
            "completion_tokens": self.num_output,
            "total_tokens": self.num_prompt + self.num_output,
            "prompt_tokens_details": {"cached_tokens": self.num_cached},
        }

    def usage_chunk(self) -> dict[str, Any]:
        return {**self._envelope([], chunk=True), "usage": self.usage()}

    def whole(self, finish: str) -> dict[str, Any]:
        text = "".join(filler_text(self.seed, 0, self.num_output))
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {**self._envelope([choice], chunk=False), "usage": self.usage()}


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise OpenAIError(400, f"request body is not valid JSON: {exc}", "invalid_json") from exc
    if not isinstance(body, dict):
        raise OpenAIError(400, "request body must be a JSON object", "invalid_json")
    return body


def create_emulator_app(settings: EmulatorSettings) -> JsonApp:
    """The ASGI app of one emulated replica; its engine loop runs for the app's lifespan."""
    # The *_created series only add noise to every scrape.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    emulator = _Emulator(settings)
    app = JsonApp(on_startup=emulator.engine.start, on_shutdown=emulator.engine.stop)
    app.route("/v1/chat/completions", emulator.chat, methods=("POST",))
    app.route("/v1/completions", emulator.completions, methods=("POST",))
    app.route("/v1/embeddings", emulator.embeddings, methods=("POST",))
    app.route("/v1/models", emulator.models)
    app.route("/health", emulator.health)
    app.route("/metrics", emulator.prometheus)
    app.state["emulator"] = emulator
    return app


async def _collect(stream: Stream, reply: _Reply) -> None:
    while (n := await stream.queue.get()) is not None:
        reply.num_output += n


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (its body has been read: nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
