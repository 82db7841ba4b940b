"""The HTTP API of `continuum serve`: OpenAI-compatible chat, the served models, and feedback in.

* `POST /v1/chat/completions` — the OpenAI chat shape, non-streaming and streaming (server-sent events,
  `data: [DONE]` at the end). `model` is `base`, a lineage (`default`: the version the server follows),
  the alias (`production`) or a version (`default@v2`, loaded on demand). Each answer's `id` is kept
  with the conversation, so feedback can name it.
* `GET /v1/models` — what `model` may be.
* `POST /v1/feedback` — `{"response_id", "feedback"}` or a whole row as `continuum feedback import`
  takes it; validated the same way, a bad one is quarantined and refused with 422 and its reasons.
* `GET /health` — the followed version and the last follow error (no token needed).

FastAPI is used for the request validation and the OpenAPI page it gives for free; uvicorn serves it.
Errors use OpenAI's error shape (`{"error": {"message", "type", "code"}}`) so OpenAI clients show them.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.errors import NotFound, ValidationError
from common.feedback.served import quarantine_request, record_feedback_request, record_served_response
from workers.serve.engine import BASE, ChatEngine, Generation
from workers.serve.follow import Follower


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send `name`, `tool_calls`, …

    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content")
    @classmethod
    def _storable(cls, value: str) -> str:
        # Answers are kept with their conversation (feedback names them): refuse what cannot be stored.
        if "\x00" in value:
            raise ValueError("contains a NUL character (\\u0000)")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("contains an unpaired surrogate (invalid UTF-16 in \\u escapes)") from None
        return value


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown OpenAI options are ignored, as OpenAI-compatible servers do

    model: str = ""
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)


def _error(status: int, message: str, code: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status)


def create_app(engine: ChatEngine, follower: Follower, sessions: Any, settings: Any, token: str) -> FastAPI:
    """The app; `token` empty means no authentication (embedded mode only: `Settings.check_serve_token`)."""
    app = FastAPI(title="continuum serve", version="1")
    stats = ServeStats()

    def authorised(request: Request) -> None:
        if not token:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise _Unauthorised()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return _error(400, problems, "invalid_request")

    @app.exception_handler(_Unauthorised)
    async def _unauthorised(_request: Request, _exc: _Unauthorised) -> JSONResponse:
        return _error(401, "missing or wrong bearer token: send `Authorization: Bearer $CONTINUUM_SERVE_TOKEN`",
                      "invalid_api_key", "authentication_error")

    def serving() -> dict[str, str]:
        """Followed name → the version it answers with now."""
        return {name: v.name for name, v in engine.followed().items()}

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "base_model": engine.base_model, "follows": follower.target, "serving": serving(),
                "loaded": [v.name for v in engine.loaded], "swaps": follower.swaps,
                "follow_error": follower.last_error}

    @app.get("/v1/stats", dependencies=[Depends(authorised)])
    def serve_stats() -> dict[str, Any]:
        from common.online.store import online_status

        followed = engine.followed()
        lineage = next(iter(followed.values())).lineage if followed else settings.adapter_name
        return {**stats.as_dict(), "serving": serving(), "swaps": follower.swaps,
                "online": online_status(sessions, lineage) if settings.online else None}

    @app.get("/v1/facts", dependencies=[Depends(authorised)])
    def facts(lineage: str = "") -> dict[str, Any]:
        from common.online.store import list_facts

        followed = engine.followed()
        name = lineage or (next(iter(followed.values())).lineage if followed else settings.adapter_name)
        found = list_facts(sessions, name)
        note = None if found or settings.online else "online learning is off (CONTINUUM_ONLINE=true turns it on)"
        return {"lineage": name, "facts": found, "note": note}

    @app.get("/v1/models", dependencies=[Depends(authorised)])
    def models() -> dict[str, Any]:
        created = int(time.time())
        names = [BASE, *engine.followed(), *engine.expected(), *(v.name for v in engine.loaded)]
        unique = list(dict.fromkeys(names))
        return {"object": "list", "data": [{"id": n, "object": "model", "created": created, "owned_by": "continuum"}
                                           for n in unique]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorised)])
    async def chat(body: ChatRequest) -> Any:
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        limit = min(body.max_completion_tokens or body.max_tokens or settings.serve_max_new_tokens,
                    settings.serve_max_new_tokens)
        temperature = settings.serve_temperature if body.temperature is None else body.temperature
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        try:
            generation = await anyio.to_thread.run_sync(_start, engine, follower, messages, body.model, limit,
                                                        temperature, body.top_p, stop, body.seed)
        except KeyError:
            return _error(404, f"model {body.model!r} is not served: GET /v1/models lists what is", "model_not_found")
        except NotFound as exc:
            return _error(404, str(exc), "model_not_found")
        except ValidationError as exc:
            return _error(400, str(exc), "invalid_request")
        response_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            return StreamingResponse(_events(generation, response_id, created, sessions, messages, stats, settings,
                                             body.model),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            await anyio.to_thread.run_sync(_drain, generation)
        finally:
            await anyio.to_thread.run_sync(generation.close)
        answer = generation.answer
        stats.answered(answer)
        await anyio.to_thread.run_sync(record_served_response, sessions, response_id, answer.adapter_id,
                                       answer.model, messages, answer.text)
        await anyio.to_thread.run_sync(learn_online, settings, sessions, body.model, answer, messages, response_id)
        return {
            "id": response_id, "object": "chat.completion", "created": created, "model": answer.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "finish_reason": answer.finish_reason}],
            "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                      "total_tokens": answer.prompt_tokens + answer.completion_tokens},
        }

    @app.post("/v1/feedback", dependencies=[Depends(authorised)])
    async def feedback(request: Request) -> Any:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            problems = [f"bad JSON: {exc}"]
            await anyio.to_thread.run_sync(quarantine_request, sessions, raw.decode("utf-8", "backslashreplace"),
                                           problems)
            return _error(422, problems[0], "invalid_feedback")
        try:
            summary = await anyio.to_thread.run_sync(record_feedback_request, sessions, settings, body)
        except NotFound as exc:
            return _error(404, str(exc), "response_not_found")
        except ValidationError as exc:
            return _error(422, str(exc), "invalid_feedback")
        stats.feedback[str(body.get("feedback"))] = stats.feedback.get(str(body.get("feedback")), 0) + 1
        return {"stored": summary.inserted == 1, "duplicate": summary.duplicate == 1}

    return app


class _Unauthorised(Exception):
    pass


class ServeStats:
    """What this server did since it started: answers, tokens, speed, feedback received."""

    RECENT = 100  # answers the latency figures cover

    def __init__(self) -> None:
        self.started = time.time()
        self.answers = 0
        self.completion_tokens = 0
        self.feedback: dict[str, int] = {}
        self._recent: list[tuple[float, float, int]] = []  # (first-token s, total s, tokens)

    def answered(self, answer: Any) -> None:
        self.answers += 1
        self.completion_tokens += answer.completion_tokens
        if answer.first_token_seconds is not None and answer.seconds:
            self._recent = [*self._recent[-(self.RECENT - 1):],
                            (answer.first_token_seconds, answer.seconds, answer.completion_tokens)]

    def as_dict(self) -> dict[str, Any]:
        recent = self._recent
        first = sorted(r[0] for r in recent)
        decode = [(r[2] - 1) / (r[1] - r[0]) for r in recent if r[2] > 1 and r[1] > r[0]]
        return {
            "uptime_seconds": round(time.time() - self.started, 1), "answers": self.answers,
            "completion_tokens": self.completion_tokens, "feedback": dict(self.feedback),
            "median_first_token_seconds": round(first[len(first) // 2], 4) if first else None,
            "mean_tokens_per_second": round(sum(decode) / len(decode), 1) if decode else None,
        }


def _start(engine: ChatEngine, follower: Follower, messages: list[dict[str, str]], requested: str,
           limit: int, temperature: float, top_p: float, stop: list[str], seed: int | None) -> Generation:
    """Start a generation; a `lineage@vN` not loaded yet is fetched from the registry first."""
    try:
        return engine.generate(messages, requested or None, max_new_tokens=limit, temperature=temperature,
                               top_p=top_p, stop=stop, seed=seed)
    except KeyError:
        if "@v" not in (requested or ""):
            raise
        follower.load_named(requested)
        return engine.generate(messages, requested, max_new_tokens=limit, temperature=temperature,
                               top_p=top_p, stop=stop, seed=seed)


def learn_online(settings: Any, sessions: Any, requested: str, answer: Any, messages: list[dict[str, str]],
                 response_id: str) -> None:
    """With CONTINUUM_ONLINE: queue the turn for its lineage's online learner and enqueue an `online` job.

    Only answers given as the lineage's present are learnt: a request for `base` or for a pinned version
    (`default@v2`) is not. A broker that is down costs a log line only: the turn waits in
    `online_turns` and the next job (the next turn's) applies it.
    """
    if not settings.online or requested == BASE or "@v" in requested:
        return
    lineage = answer.model.rpartition("@v")[0] if answer.adapter_id is not None else settings.adapter_name
    from common.online.store import add_turn

    turn_id = add_turn(sessions, lineage, messages, answer.text, response_id)
    try:
        from common.orchestration.enqueue import enqueue_job
        from workers.dispatch import orchestrator_for

        enqueue_job(orchestrator_for(settings), "online", {"lineage": lineage},
                    idempotency_key=f"online:{lineage}:{turn_id}")
    except Exception as exc:  # noqa: BLE001 - the turn is stored; learning it can wait for the next job
        import logging

        logging.getLogger("continuum.serve").warning("online job for turn %s not enqueued: %s", turn_id, exc)


def _drain(generation: Generation) -> None:
    for _ in generation:
        pass


_END = object()


async def _events(generation: Generation, response_id: str, created: int, sessions: Any,
                  messages: list[dict[str, str]], stats: ServeStats, settings: Any,
                  requested: str) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk shape; the generation stops if the client goes away."""
    answer = generation.answer

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        payload = {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": answer.model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(payload)}\n\n"

    pieces = iter(generation)
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            # A cancelled await still waits for this call to return (anyio does not abandon the
            # thread), so `close` below never runs while `next` is executing.
            try:
                piece = await anyio.to_thread.run_sync(next, pieces, _END)
            except Exception as exc:  # the status line is sent already: say it in the stream, as OpenAI does
                error = {"message": f"generation failed: {type(exc).__name__}: {exc}", "type": "server_error",
                         "code": "generation_failed"}
                yield f"data: {json.dumps({'error': error})}\n\n"
                return
            if piece is _END:
                break
            yield chunk({"content": piece})
        yield chunk({}, answer.finish_reason)
        stats.answered(answer)
        await anyio.to_thread.run_sync(record_served_response, sessions, response_id, answer.adapter_id,
                                       answer.model, messages, answer.text)
        await anyio.to_thread.run_sync(learn_online, settings, sessions, requested, answer, messages, response_id)
        yield "data: [DONE]\n\n"
    finally:
        # A client that went away cancels us mid-stream: stop generating at the next token, then release
        # the model (closing waits for the generation thread, so it runs off the event loop).
        generation.cancel()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(generation.close)
