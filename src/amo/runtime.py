"""`amo serve`: the promoted bundle over HTTP (FastAPI + uvicorn, 127.0.0.1 by default).

    POST /route  /plan  /invoke  /copilot
    GET  /healthz (liveness)  /readyz (a verified bundle is served)  /bundle  /metrics (Prometheus)
         /docs  /redoc (OpenAPI, assets served locally)

The runtime verifies every checksum of the current bundle before serving it. A background thread
reads the registry's `current` pointer every `serve.poll_seconds`; when it names another bundle,
that bundle is loaded and verified in full on the side, then one reference is swapped. A request
takes that reference once, so in-flight requests finish on the Brain they started with. A bundle
that fails verification is refused (logged, shown by /healthz) and the old one keeps serving.
Arms are re-hashed when they load (first /invoke or /copilot). Errors are JSON:
{"error": {"code": ..., "message": ...}}; a 500 carries only a request id, its traceback is logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field

from amo.asgi import ASGIApp, Message, Receive, Scope, Send
from amo.bundle import BundleError
from amo.registry import Registry

log = logging.getLogger("amo.runtime")



class Runtime:
    """The Brain being served, and the loop that swaps in a newly promoted, verified one."""

    def __init__(self, registry: Registry, poll_seconds: float = 2.0,
                 load: Callable[[Any], Any] | None = None) -> None:
        self.registry = registry
        self.poll_seconds = poll_seconds
        self._load = load or _load_brain
        self.brain: Any = None  # swapped whole; readers take it once per request
        self.refused: dict[str, Any] | None = None
        self.loaded_at: str | None = None
        self.swaps = 0  # bundles swapped in, the first one included (for /metrics)
        self.refusals = 0  # bundles refused, or unreadable pointers
        self._pointer: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.arm_lock = threading.Lock()  # one base LM: arm calls run one at a time

    def refresh(self) -> bool:
        """Load the bundle `current` names if it changed; True if a new Brain is now served."""
        try:
            pointer = self.registry.pointer()
        except Exception as exc:  # noqa: BLE001 -- an unreadable registry keeps the old bundle
            log.warning("cannot read the registry's current pointer: %s", exc)
            return False
        if pointer is None or pointer == self._pointer:
            return False
        self._pointer = pointer
        try:
            bundle_id = self.registry.pointer_id(pointer)
        except BundleError as exc:
            self.refused = {"bundle_id": None, "error": f"unreadable current pointer: {exc}", "time": _now()}
            self.refusals += 1
            log.error("unreadable current pointer %r: %s", pointer[:200], exc)
            return False
        if self.brain is not None and bundle_id == self.brain.bundle_id:
            self.refused = None  # pointed back at the bundle being served
            return False
        try:
            brain = self._load(self.registry.bundle_path(bundle_id))
        except Exception as exc:  # noqa: BLE001 -- any load failure refuses the bundle
            self.refused = {"bundle_id": bundle_id, "error": str(exc), "time": _now()}
            self.refusals += 1
            log.error("refused bundle %s, still serving %s: %s", bundle_id,
                      self.brain.bundle_id if self.brain else "nothing", exc)
            return False
        self.brain, self.refused, self.loaded_at = brain, None, _now()
        self.swaps += 1
        log.info("serving bundle %s", brain.bundle_id)
        return True

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="amo-bundle-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _poll(self) -> None:
        # No lower OS priority for this thread: it holds the GIL while loading, and a starved
        # holder stalls every request (seen: a 30 s stall under load).
        while not self._stop.wait(self.poll_seconds):
            self.refresh()

    def health(self) -> dict[str, Any]:
        brain = self.brain
        return {"status": "ok" if brain is not None else "no_bundle",
                "bundle_id": brain.bundle_id if brain is not None else None,
                "loaded_at": self.loaded_at, "refused": self.refused,
                "arms_loaded": getattr(brain, "_arms", None) is not None,
                "registry": self.registry.url}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _load_brain(path: Any) -> Any:
    """Load and verify a bundle, then warm its route path so the first request is fast."""
    from amo.brain import Brain

    brain = Brain(path)
    brain.route("warm up")
    return brain


class RouteBatcher:
    """One thread routes every /route request: it takes whatever requests are waiting (up to
    `max_batch`) and answers them with one encoder batch. Under load, requests that arrive
    while a batch runs form the next one; a lone request is routed at once, without waiting."""

    def __init__(self, max_batch: int = 32, on_batch: Callable[[int], None] | None = None) -> None:
        self.max_batch = max_batch
        self.on_batch = on_batch or (lambda size: None)  # told each batch's size (for /metrics)
        self._queue: queue.Queue[tuple[Any, str, asyncio.AbstractEventLoop, asyncio.Future[Any]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.routed = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="amo-route-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)

    async def route(self, brain: Any, prompt: str) -> Any:
        """The Route for `prompt` from `brain` (the Brain this request started with)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put((brain, prompt, loop, future))
        return await future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = [first]
            while len(items) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                items.append(item)
            for brain in {id(item[0]): item[0] for item in items}.values():
                group = [item for item in items if item[0] is brain]
                try:
                    outcomes: list[Any] = brain.route_many([prompt for _, prompt, _, _ in group])
                except Exception as exc:  # noqa: BLE001 -- handed to each waiting request
                    outcomes = [exc] * len(group)
                for (_, _, loop, future), outcome in zip(group, outcomes):
                    loop.call_soon_threadsafe(_settle, future, outcome)
            self.batches += 1
            self.routed += len(items)
            self.on_batch(len(items))


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():  # the client went away
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def unicode_text(value: str) -> str:
    """`value` when it is valid Unicode: JSON can escape a lone surrogate (`\\ud800`), which no
    tokenizer or UTF-8 encoder accepts (it failed a whole /route batch with a 500)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"a lone surrogate {value[exc.start]!r} at character {exc.start} is not "
                         "text (send valid UTF-8)") from None
    return value


Text = Annotated[str, AfterValidator(unicode_text)]


class PromptIn(BaseModel):
    prompt: Text = Field(..., description="The user's prompt (at most data.max_prompt_chars characters).")


class InvokeIn(BaseModel):
    input: Text = Field(..., description="Text for the arm (or the base model).")
    arm: Text | None = Field(None, description="Arm name; null: the base model.")
    max_new_tokens: int | None = Field(None, ge=1, le=512)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before the app reads it,
    whether it declares Content-Length or arrives in chunks."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        # Read the body here (at most `limit` bytes are kept), then replay it to the app.
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay(message, receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay(body, receive), send)

    async def _refuse(self, send: Send) -> None:
        body = _error_body("body_too_large", f"request body is larger than {self.limit} bytes "
                                             "(params.yaml serve.max_body_bytes)")
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _replay(first: Message, receive: Receive) -> Receive:
    """A receive() that hands `first` over once, then reads from the server again (disconnects)."""
    pending = [first]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


def create_app(runtime: Runtime, max_prompt_chars: int = 4000, max_body_bytes: int = 65536,
               manage_runtime: bool = True, max_batch: int = 32) -> Any:
    """The FastAPI app over `runtime`; with manage_runtime it starts and stops the poller."""
    from contextlib import asynccontextmanager, contextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from fastapi_offline import FastAPIOffline
    from starlette.exceptions import HTTPException

    from amo.runtime_metrics import RequestMetrics, RuntimeMetrics

    metrics = RuntimeMetrics(runtime)
    batcher = RouteBatcher(max_batch, metrics.batch_size.observe)

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        if manage_runtime:
            runtime.start()
        batcher.start()
        yield
        batcher.stop()
        if manage_runtime:
            runtime.stop()

    # /docs and /redoc with their scripts served from the package, not a CDN: they work offline.
    app = FastAPIOffline(title="amo runtime", version="1", lifespan=lifespan,
                         description="Route, plan and answer prompts with the promoted bundle.")

    def text(value: str, name: str) -> str:
        if not value.strip():
            raise ApiError(422, "empty_" + name, f"{name} is empty")
        if len(value) > max_prompt_chars:
            raise ApiError(422, name + "_too_long", f"{name} has {len(value)} characters; the limit "
                                                    f"is {max_prompt_chars} (params.yaml data.max_prompt_chars)")
        return value

    def brain(code: str = "no_bundle") -> Any:
        """The Brain being served, or a 503 `code` saying why there is none."""
        current = runtime.brain
        if current is None:
            why = f": bundle {runtime.refused['bundle_id']} was refused" if runtime.refused else ""
            raise ApiError(503, code, f"no verified bundle is being served{why}")
        return current

    @contextmanager
    def refused_arms() -> Iterator[None]:
        """An arm whose files no longer match the manifest: 503 naming the arm and the file."""
        try:
            yield
        except BundleError as exc:
            log.error("%s", exc)
            raise ApiError(503, "arm_refused", str(exc)) from None

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            return JSONResponse({"error": {"code": "invalid_json", "message":
                                           f"request body is not valid JSON: {first.get('msg')}"}}, 400)
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return JSONResponse({"error": {"code": "invalid_request", "message": f"{where}: {first['msg']}"}}, 422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": {"code": f"http_{exc.status_code}", "message": str(exc.detail)}},
                            exc.status_code)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # The exception's text may name files or data: it goes to the log, under an id the
        # client can quote, never into the response.
        request_id = uuid.uuid4().hex[:16]
        log.error("request %s (%s %s) failed", request_id, request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": {"code": "internal", "request_id": request_id,
                                       "message": f"internal error (request id {request_id})"}}, 500,
                            headers={"x-request-id": request_id})

    @app.post("/route", summary="Which agents answer the prompt (or abstain), best first")
    async def route(body: PromptIn) -> dict[str, Any]:
        current = brain()
        result = await batcher.route(current, text(body.prompt, "prompt"))
        metrics.observe_route(result)
        return {"bundle_id": current.bundle_id, "route": result.to_dict()}

    @app.post("/plan", summary="The ordered agent path for the prompt, with its decision rules")
    def plan(body: PromptIn) -> dict[str, Any]:
        current = brain()
        route_, plan_ = current.plan(text(body.prompt, "prompt"))
        metrics.observe_route(route_)
        return {"bundle_id": current.bundle_id, "route": route_.to_dict(),
                "plan": {"path": plan_.path, "abstained": plan_.abstained, "rules": plan_.rules,
                         "choice": plan_.choice}}

    @app.post("/invoke", summary="Run one arm (or the base model) on the input")
    def invoke(body: InvokeIn) -> dict[str, Any]:
        current = brain()
        value = text(body.input, "input")
        if body.arm is not None and body.arm not in current.runtime["arms"]:
            raise ApiError(422, "unknown_arm", f"unknown arm {body.arm!r}; this bundle's arms: "
                                               + ", ".join(current.runtime["arms"]))
        with runtime.arm_lock, refused_arms():
            output = current.invoke([(body.arm, value)], body.max_new_tokens)[0]
        return {"bundle_id": current.bundle_id, "arm": body.arm, "output": output}

    @app.post("/copilot", summary="Route, plan and run the arms for the prompt: one answer")
    def copilot(body: PromptIn) -> dict[str, Any]:
        current = brain()
        prompt = text(body.prompt, "prompt")
        with runtime.arm_lock, refused_arms():
            answer = current.copilot(prompt)
        metrics.observe_route(answer.route)
        return {"bundle_id": current.bundle_id, **answer.to_dict()}

    @app.api_route("/healthz", methods=["GET", "HEAD"],
                   summary="Liveness (200 while the process is up): which bundle is served, any refused one")
    def healthz() -> dict[str, Any]:
        return {**runtime.health(), "route_batches": batcher.batches, "routed": batcher.routed}

    @app.api_route("/readyz", methods=["GET", "HEAD"],
                   summary="Readiness: 200 once a verified bundle is served, 503 while none is")
    def readyz() -> dict[str, Any]:
        return {"status": "ready", "bundle_id": brain("not_ready").bundle_id}

    @app.get("/bundle", summary="The served bundle's manifest")
    def bundle() -> dict[str, Any]:
        return brain().manifest

    @app.get("/metrics", summary="Prometheus metrics: requests, latency, routes, batches, bundles",
             response_class=Response, response_model=None)
    def prometheus() -> Any:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: counts 413s too
    return app


def serve(registry: Registry, host: str, port: int, *, poll_seconds: float, max_prompt_chars: int,
          max_body_bytes: int, max_batch: int) -> None:
    """Run the runtime under uvicorn (one worker) until interrupted."""
    import uvicorn

    runtime = Runtime(registry, poll_seconds)
    app = create_app(runtime, max_prompt_chars=max_prompt_chars, max_body_bytes=max_body_bytes,
                     max_batch=max_batch)
    uvicorn.run(app, host=host, port=port, workers=1, log_level="warning", access_log=False)
