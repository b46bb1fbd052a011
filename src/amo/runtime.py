"""`amo serve`: the promoted bundle over HTTP (FastAPI + uvicorn, 127.0.0.1 by default).

    POST /route  /plan  /invoke  /copilot  /feedback
    GET  /healthz (liveness)  /readyz (a verified bundle is served)  /bundle  /metrics (Prometheus)
         /docs  /redoc (OpenAPI, assets served locally)

    AMO_REGISTRY=/srv/amo/registry uvicorn --factory amo.runtime:create_app --workers 2

Settings come from amo.settings (AMO_ variables over params.yaml: serve). /invoke and /copilot's
arms run in one generation process of their own (amo.generation; one base LM), never in the
threads that answer the other endpoints nor under their GIL: at most serve.generation_queue of
them are admitted at once (more: 429 with Retry-After), each waits at most
serve.request_timeout_seconds (504). One access-log line per
request (logger amo.access): method, path, status, milliseconds and the request id, which every
response carries in X-Request-ID.

The runtime verifies every checksum of the current bundle before serving it. A background thread
reads the registry's `current` pointer every `serve.poll_seconds`; when it names another bundle,
that bundle is loaded and verified in full (and its signature checked when a verify key is
configured, amo.signing) on the side, then one reference is swapped. A request
takes that reference once, so in-flight requests finish on the Brain they started with. A bundle
that fails verification is refused (logged, shown by /healthz) and the old one keeps serving.
With serve.decision_log (logs/decisions by default; its folder is checked writable once, at
start, and an unwritable one stops the start naming the setting), each /route, /plan and /copilot
answer is logged before it is sent (amo.decisions: its request id is in the answer) and POST
/feedback attaches a verdict to it;
a challenger bundle (the registry's challenger.json) is scored on the logged prompts in shadow,
on a thread of its own (amo.shadow).
Arms are re-hashed when they load (first /invoke or /copilot, or with the bundle when serve.arms
is eager). Errors are JSON: {"error": {"code": ..., "message": ...}}; a 500 carries only a request
id, its traceback is logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

# at module level: FastAPI resolves the endpoints' annotations in these globals
from amo import runtime_api as api
from amo.asgi import ASGIApp, Message, Receive, Scope, Send
from amo.bundle import BundleError
from amo.registry import Registry

if TYPE_CHECKING:
    from amo.settings import RuntimeSettings

log = logging.getLogger("amo.runtime")
access_log = logging.getLogger("amo.access")


class Runtime:
    """The Brain being served, and the loop that swaps in a newly promoted, verified one."""

    def __init__(self, registry: Registry, poll_seconds: float = 2.0,
                 load: Callable[[Any], Any] | None = None, arms: str = "lazy",
                 preload: Callable[[Any], None] | None = None) -> None:
        self.registry = registry
        self.poll_seconds = poll_seconds
        self.arms = arms  # serve.arms: lazy, eager or off
        # serve.arms eager: `preload` loads a bundle's arms in the generation process
        self._load = load or partial(_load_brain, eager_arms=arms == "eager", preload=preload)
        self._load_challenger = load or _load_brain  # its arms never load: it only routes, in shadow
        self.brain: Any = None  # swapped whole; readers take it once per request
        self.challenger: Any = None  # the registry's challenger.json bundle, scored in shadow (amo.shadow)
        self._challenger_pointer: str | None = None
        self.shadowing = True  # whether a challenger is loaded at all (create_app: only with a decision log)
        self.refused: dict[str, Any] | None = None
        self.loaded_at: str | None = None
        self.swaps = 0  # bundles swapped in, the first one included (for /metrics)
        self.refusals = 0  # bundles refused, or unreadable pointers
        self._pointer: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
            path = self.registry.bundle_path(bundle_id)
            self.registry.check_signed(path)  # with a verify key: unsigned or other-key bundles refused
            brain = self._load(path)
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

    def refresh_challenger(self) -> None:
        """Load the bundle `challenger.json` names when it changed (verified as any bundle); drop
        it when the pointer is gone. A challenger that fails to load is logged and not scored."""
        if not self.shadowing:
            return
        try:
            text = self.registry.challenger_pointer()
        except Exception as exc:  # noqa: BLE001 -- shadow scoring is optional
            log.warning("cannot read the registry's challenger pointer: %s", exc)
            return
        if text == self._challenger_pointer:
            return
        self._challenger_pointer = text
        if text is None:
            self.challenger = None
            return
        try:
            from amo.registry import CHALLENGER

            bundle_id = self.registry.pointer_id(text, CHALLENGER)
            if self.challenger is None or self.challenger.bundle_id != bundle_id:
                path = self.registry.bundle_path(bundle_id)
                self.registry.check_signed(path)
                self.challenger = self._load_challenger(path)
                log.info("scoring bundle %s in shadow", bundle_id)
        except Exception as exc:  # noqa: BLE001 -- any load failure refuses the challenger
            self.challenger = None
            log.error("refused challenger bundle: %s", exc)

    def start(self) -> None:
        self.refresh()
        self.refresh_challenger()
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
            self.refresh_challenger()

    def health(self) -> dict[str, Any]:
        brain = self.brain
        return {"status": "ok" if brain is not None else "no_bundle",
                "bundle_id": brain.bundle_id if brain is not None else None,
                "loaded_at": self.loaded_at, "refused": self.refused,
                "challenger": self.challenger.bundle_id if self.challenger is not None else None,
                "arms": self.arms, "arms_loaded": getattr(brain, "_arms", None) is not None,
                "registry": self.registry.url}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _load_brain(path: Any, eager_arms: bool = False, preload: Callable[[Any], None] | None = None) -> Any:
    """Load and verify a bundle, then warm its route path so the first request is fast; with
    `eager_arms`, load (and re-hash) its arms too, so a bundle whose arms fail is refused whole:
    in the generation process through `preload` when given, else here."""
    from amo.brain import Brain

    brain = Brain(path)
    brain.route("warm up")
    if eager_arms and preload is not None:
        preload(brain.path)
    elif eager_arms:
        brain.arms  # noqa: B018 -- loads the base LM and the arms
    return brain


class RouteBatcher:
    """One thread routes every /route request: it takes whatever requests are waiting (up to
    `max_batch`) and answers them with one encoder batch. Under load, requests that arrive
    while a batch runs form the next one; a lone request is routed at once, unless `window`
    seconds are given to wait for more after the first."""

    def __init__(self, max_batch: int = 32, on_batch: Callable[[int], None] | None = None,
                 window: float = 0.0) -> None:
        self.max_batch = max_batch
        self.window = window
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
            deadline = time.monotonic() + self.window
            while len(items) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic())) \
                        if self.window else self._queue.get_nowait()
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


class ApiError(Exception):
    """An error answered as {"error": {"code", "message"}} with `status` (and `headers`)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class GenerationPool:
    """One job at a time runs every generation (/invoke, /copilot's arms): one base LM generates
    one batch at a time anyway. With `process` (serve.generation_process, the default) the jobs
    run in one spawned process of their own (amo.generation), so torch never holds the GIL or a
    core that routing needs; without, on a thread of this process (one that other endpoints never
    use). At most `limit` requests are admitted at once, the running one included (more: 429 with
    Retry-After); a request gets 504 after `timeout` seconds (a job not started by then never
    runs; a running one finishes, and keeps its slot until it does)."""

    def __init__(self, limit: int, timeout: float, threads: int = 0, process: bool = True, nice: int = 0) -> None:
        self.limit, self.timeout, self.threads, self.process = limit, timeout, threads, process
        self.nice = nice  # the generation process only: a thread would lower the whole server's priority
        self.admitted = 0
        self.loaded: str | None = None  # the bundle folder whose arms the generation process holds
        self._lock = threading.Lock()
        self._seconds = 1.0  # moving average of a job's time, for Retry-After
        self._executor: ThreadPoolExecutor | None = None
        self._worker: ProcessPoolExecutor | None = None

    def start(self) -> None:
        # The thread keeps jobs in order and cancellable until they start; with `process` it
        # hands each one to the process and waits (a blocked wait holds no GIL).
        from amo.generation import start

        if self.process:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="amo-generation")
            self._worker = self._spawn()
        else:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="amo-generation", initializer=start,
                                                initargs=(self.threads,))

    def _spawn(self) -> ProcessPoolExecutor:
        """The generation process (started on its first job): spawned, so it shares no state."""
        import multiprocessing

        from amo.generation import start

        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=start,
                                   initargs=(self.threads, self.nice))

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._worker is not None:
            # A running generation would hold the server's exit until it ends: end the process.
            for process in list(getattr(self._worker, "_processes", {}).values()):
                process.terminate()
            self._worker.shutdown(wait=False, cancel_futures=True)

    async def generate(self, brain: Any, rows: list[tuple[str | None, str]],
                       max_new_tokens: int | None = None) -> list[str]:
        """`rows` through `brain`'s arms: with `process`, amo.generation.invoke on the bundle's
        folder in the generation process (plain, picklable arguments); else brain.invoke here."""
        if not self.process:
            return [str(output) for output in await self.run(partial(brain.invoke, rows, max_new_tokens))]
        from amo import generation

        outputs: list[str] = await self.run(partial(generation.invoke, str(brain.path), rows, max_new_tokens))
        self.loaded = str(brain.path)
        return outputs

    def preload(self, bundle: Any) -> None:
        """Load the arms of the bundle in folder `bundle` in the generation process now, and wait
        (serve.arms eager); its BundleError when they fail."""
        from amo import generation

        if self._worker is None:
            raise RuntimeError("GenerationPool.preload needs a started pool with a generation process")
        self.loaded = self._worker.submit(generation.preload, str(bundle)).result()

    async def run(self, job: Callable[[], Any]) -> Any:
        """`job()`'s result, computed in the generation process (or on the generation thread)."""
        assert self._executor is not None, "GenerationPool.start() was not called"
        with self._lock:
            if self.admitted >= self.limit:
                wait = max(1, math.ceil(self._seconds * self.admitted))
                raise ApiError(429, "generation_busy", f"{self.admitted} generation requests are already admitted "
                               f"(serve.generation_queue / AMO_GENERATION_QUEUE = {self.limit}); retry in "
                               f"{wait} s", {"Retry-After": str(wait)})
            self.admitted += 1
        future = self._executor.submit(self._timed, job)
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError:
            future.cancel()
            raise ApiError(504, "timeout", f"no answer within {self.timeout:g} s (serve.request_timeout_seconds "
                           "/ AMO_REQUEST_TIMEOUT_SECONDS)") from None

    def _timed(self, job: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            if self._worker is None:
                return job()
            try:
                return self._worker.submit(job).result()
            except BrokenProcessPool:
                log.error("the generation process died (killed, or out of memory); starting a new one")
                self._worker, self.loaded = self._spawn(), None
                raise ApiError(503, "generation_failed", "the generation process died during this request "
                               "and was restarted; retry") from None
        finally:
            self._seconds = 0.8 * self._seconds + 0.2 * (time.perf_counter() - start)

    def _release(self, _: Future[Any]) -> None:
        with self._lock:
            self.admitted -= 1


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
                                             "(serve.max_body_bytes / AMO_MAX_BODY_BYTES)")
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




STARTUP_FAILURE = 3  # uvicorn.config.STARTUP_FAILURE: a worker that exits with it is not restarted
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
REQUEST_ID_KEY = "amo.request_id"  # where AccessLog leaves a request's id in its ASGI scope
STARTED_KEY = "amo.started"  # and its perf_counter() start, for the decision log's latency


class AccessLog:
    """ASGI middleware: gives every request an id (the client's X-Request-ID when it is a plain
    token, else a new one), returns it in X-Request-ID, and logs one line per request to
    `amo.access`: method, path, status, milliseconds, id (a request that raised logs its 500)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        start, status = time.perf_counter(), 500
        scope[REQUEST_ID_KEY], scope[STARTED_KEY] = request_id, start

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                # the scope's id: the decision log may have replaced a client's repeated one
                message["headers"] = [*headers, (b"x-request-id", str(scope[REQUEST_ID_KEY]).encode())]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            access_log.info("method=%s path=%s status=%d ms=%.1f request_id=%s", scope["method"],
                            scope["path"], status, 1000 * (time.perf_counter() - start), scope[REQUEST_ID_KEY])


def create_app(runtime: Runtime | None = None, settings: RuntimeSettings | None = None, *,
               manage_runtime: bool = True) -> Any:
    """The FastAPI app over `runtime`, with `settings`; with manage_runtime it starts and stops
    the poller. Called with neither (`uvicorn --factory amo.runtime:create_app`), the settings
    come from the environment (amo.settings) and the runtime from the registry they name; with a
    runtime but no settings, the built-in defaults apply."""
    from contextlib import asynccontextmanager, contextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from fastapi_offline import FastAPIOffline
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    from amo.brain import CopilotAnswer, step_arms
    from amo.config import ConfigError
    from amo.decisions import DecisionLog
    from amo.extras import ExtraNotInstalled, missing
    from amo.runtime_metrics import RequestMetrics, RuntimeMetrics
    from amo.settings import RuntimeSettings, load_settings
    from amo.shadow import ShadowScorer

    factory = runtime is None and settings is None  # uvicorn --factory, or a worker of amo serve
    if runtime is None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if runtime is None:
            settings = settings or load_settings()
        s = settings or RuntimeSettings.model_construct()
        decisions = DecisionLog.from_settings(s)
        if decisions is not None:
            decisions.check()  # once, here: an unwritable folder stops the start, not every answer
    except ConfigError as exc:
        if not factory:
            raise
        log.error("%s", exc)
        # uvicorn's startup-failure status: its supervisor stops instead of restarting the worker
        raise SystemExit(STARTUP_FAILURE) from None
    generation = GenerationPool(s.generation_queue, s.request_timeout_seconds, s.generation_threads,
                                process=s.generation_process, nice=s.generation_nice)
    if runtime is None:
        runtime = Runtime(s.open_registry(), s.poll_seconds, arms=s.arms,
                          preload=generation.preload if s.generation_process else None)
    metrics = RuntimeMetrics(runtime)
    batcher = RouteBatcher(s.max_batch, metrics.batch_size.observe, window=s.batch_window_ms / 1000)
    shadow = ShadowScorer(decisions, lambda: runtime.challenger) if decisions is not None else None
    runtime.shadowing = shadow is not None  # no log to write agreement to: no second router in memory

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        generation.start()  # first: an eager runtime loads arms in the generation process
        if manage_runtime:
            runtime.start()
        batcher.start()
        if decisions is not None and shadow is not None:
            decisions.start()
            shadow.start()
        yield
        generation.stop()
        batcher.stop()
        if decisions is not None and shadow is not None:
            shadow.stop()
            decisions.stop()
        if manage_runtime:
            runtime.stop()

    # /docs and /redoc with their scripts served from the package, not a CDN: they work offline.
    app = FastAPIOffline(title="amo runtime", version="1", lifespan=lifespan,
                         description="Route, plan and answer prompts with the promoted bundle. Every "
                                     "error is `{\"error\": {\"code\", \"message\"}}`.")

    def text(value: str, name: str) -> str:
        if not value.strip():
            raise ApiError(422, "empty_" + name, f"{name} is empty")
        if len(value) > s.max_prompt_chars:
            raise ApiError(422, name + "_too_long", f"{name} has {len(value)} characters; the limit "
                                                    f"is {s.max_prompt_chars} (data.max_prompt_chars / "
                                                    "AMO_MAX_PROMPT_CHARS)")
        return value

    def brain(code: str = "no_bundle") -> Any:
        """The Brain being served, or a 503 `code` saying why there is none."""
        current = runtime.brain
        if current is None:
            why = f": bundle {runtime.refused['bundle_id']} was refused" if runtime.refused else ""
            raise ApiError(503, code, f"no verified bundle is being served{why}")
        return current

    def arms_on(endpoint: str) -> None:
        """503 when serve.arms is off, 501 when amo[arms] (torch...) is not installed here."""
        if runtime.arms == "off":
            raise ApiError(503, "arms_off", "arms are off in this runtime (serve.arms / AMO_ARMS = off): "
                                            "it routes and plans only")
        absent = missing("arms")
        if absent:
            raise ApiError(501, "extra_not_installed", str(ExtraNotInstalled(endpoint, "arms", absent)))

    @contextmanager
    def refused_arms() -> Iterator[None]:
        """An arm whose files no longer match the manifest: 503 naming the arm and the file."""
        try:
            yield
        except BundleError as exc:
            log.error("%s", exc)
            raise ApiError(503, "arm_refused", str(exc)) from None
        except ExtraNotInstalled as exc:  # raised where the arms load (the generation process)
            raise ApiError(501, "extra_not_installed", str(exc)) from None

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, exc.status, headers=exc.headers)

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
        request_id = request.scope.get(REQUEST_ID_KEY) or uuid.uuid4().hex[:16]
        log.error("request %s (%s %s) failed", request_id, request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": {"code": "internal", "request_id": request_id,
                                       "message": f"internal error (request id {request_id})"}}, 500,
                            headers={"x-request-id": request_id})

    def logged(request: Request, endpoint: str, current: Any, prompt: str, route_: dict[str, Any],
               plan_: dict[str, Any] | None) -> str:
        """The request's id, once its decision is in the log (serve.decision_log): one write(2)
        before the answer is sent (amo.decisions' durability rule)."""
        request_id = str(request.scope.get(REQUEST_ID_KEY) or uuid.uuid4().hex[:16])
        if decisions is not None:
            if decisions.known.seen(request_id):
                # A client's X-Request-ID this runtime already logged a decision under: a new id, so
                # feedback on the first decision can never land on this one.
                request_id = request.scope[REQUEST_ID_KEY] = uuid.uuid4().hex[:16]
            started = request.scope.get(STARTED_KEY) or time.perf_counter()
            try:
                decisions.decide(request_id, endpoint, current.bundle_id, prompt, route_, plan_,
                                 1000 * (time.perf_counter() - started))
            except OSError as exc:
                log.error("request %s: cannot log its decision in %s: %s", request_id, decisions.folder, exc)
                raise ApiError(503, "decision_log_failed", f"the decision could not be logged (request id "
                                                           f"{request_id}), so it is not answered") from None
            if shadow is not None and runtime.challenger is not None:  # scored later, on its own thread
                shadow.offer(request_id, prompt, current.bundle_id, [a["id"] for a in route_["agents"]])
        return request_id

    posted = api.errors(400, 413, 422, 500, 503)

    @app.post("/route", summary="Which agents answer the prompt (or abstain), best first", responses=posted)
    async def route(body: api.PromptIn, request: Request) -> api.RouteOut:
        current = brain()
        prompt = text(body.prompt, "prompt")
        result = await batcher.route(current, prompt)
        metrics.observe_route(result)
        answer = result.to_dict()
        return api.RouteOut.model_validate({"request_id": logged(request, "route", current, prompt, answer, None),
                                            "bundle_id": current.bundle_id, "route": answer})

    @app.post("/plan", summary="The ordered agent path for the prompt, with its decision rules",
              responses=posted)
    def plan(body: api.PromptIn, request: Request) -> api.PlanOut:
        current = brain()
        prompt = text(body.prompt, "prompt")
        route_, plan_ = current.plan(prompt)
        metrics.observe_route(route_)
        answer = route_.to_dict()
        request_id = logged(request, "plan", current, prompt, answer,
                            {"path": plan_.path, "abstained": plan_.abstained})
        return api.PlanOut.model_validate({
            "request_id": request_id, "bundle_id": current.bundle_id, "route": answer,
            "plan": {"path": plan_.path, "abstained": plan_.abstained, "rules": plan_.rules, "choice": plan_.choice}})

    generating = api.errors(400, 413, 422, 429, 500, 501, 503, 504)

    @app.post("/invoke", summary="Run one arm (or the base model) on the input", responses=generating)
    async def invoke(body: api.InvokeIn) -> api.InvokeOut:
        current = brain()
        value = text(body.input, "input")
        if body.arm is not None and body.arm not in current.runtime["arms"]:
            raise ApiError(422, "unknown_arm", f"unknown arm {body.arm!r}; this bundle's arms: "
                                               + ", ".join(current.runtime["arms"]))
        if body.max_new_tokens is not None and body.max_new_tokens > s.max_new_tokens:
            raise ApiError(422, "max_new_tokens_too_large", f"max_new_tokens {body.max_new_tokens} is over this "
                           f"runtime's limit {s.max_new_tokens} (serve.max_new_tokens / AMO_MAX_NEW_TOKENS)")
        arms_on("/invoke")
        with refused_arms():
            (output,) = await generation.generate(current, [(body.arm, value)], body.max_new_tokens)
        return api.InvokeOut(bundle_id=current.bundle_id, arm=body.arm, output=output)

    @app.post("/copilot", summary="Route, plan and run the arms for the prompt: one answer", responses=generating)
    async def copilot(body: api.PromptIn, request: Request) -> api.CopilotOut:
        current = brain()
        prompt = text(body.prompt, "prompt")
        if runtime.arms == "off":
            arms_on("/copilot")
        # Route and plan here (fast, ONNX); only the arms' generation waits for the generation process.
        route_, plan_, steps = await run_in_threadpool(current.copilot_steps, prompt)
        arms = step_arms(steps)
        outputs: list[str] = []
        if arms:
            arms_on("/copilot (its plan calls the arms " + ", ".join(arms) + ")")
            with refused_arms():
                outputs = await generation.generate(current, [(arm, prompt) for arm in arms])
        answer = CopilotAnswer.of(prompt, route_, plan_, steps, outputs)
        metrics.observe_route(answer.route)
        request_id = logged(request, "copilot", current, prompt, route_.to_dict(),
                            {"path": plan_.path, "abstained": plan_.abstained})
        return api.CopilotOut.model_validate({"request_id": request_id, "bundle_id": current.bundle_id,
                                              **answer.to_dict()})

    @app.post("/feedback", summary="A verdict on a logged decision (ok, wrong, partial), for amo data harvest",
              responses=api.errors(400, 404, 413, 422, 500, 503))
    def feedback(body: api.FeedbackIn) -> api.FeedbackOut:
        current = brain()
        if decisions is None:
            raise ApiError(503, "decision_log_off", "this runtime logs no decisions (serve.decision_log / "
                                                    "AMO_DECISION_LOG is off), so it takes no feedback")
        if body.outcome == "partial" and not body.agents:
            raise ApiError(422, "agents_required", "outcome partial needs `agents`: the agents that should "
                                                   "have been selected")
        if body.outcome == "ok" and body.agents is not None:
            raise ApiError(422, "agents_with_ok", "outcome ok confirms the served selection: send no `agents` "
                                                  "(or send outcome wrong with the right ones)")
        named = [*(body.agents or []), *(body.path or [])]
        known = set(current.agent_ids)
        unknown = sorted({agent for agent in named if agent not in known})
        if unknown:
            raise ApiError(422, "unknown_agent", "unknown agent(s) " + ", ".join(repr(a) for a in unknown)
                           + f" (not among the {len(known)} agents of bundle {current.bundle_id})")
        if body.request_id not in decisions.known:
            raise ApiError(404, "unknown_request_id", f"no decision with request id {body.request_id!r} "
                                                      f"is in the decision log")
        try:
            record = decisions.feedback(body.request_id, body.outcome, body.agents, body.path, current.bundle_id)
        except OSError as exc:
            log.error("cannot log feedback on %s in %s: %s", body.request_id, decisions.folder, exc)
            raise ApiError(503, "decision_log_failed", "the feedback could not be logged") from None
        return api.FeedbackOut(request_id=body.request_id, outcome=body.outcome, time=record["time"])

    @app.api_route("/healthz", methods=["GET", "HEAD"], responses=api.errors(500),
                   summary="Liveness (200 while the process is up): which bundle is served, any refused one")
    def healthz() -> api.HealthOut:
        health, current = runtime.health(), runtime.brain
        if current is not None and generation.loaded == str(getattr(current, "path", "")):
            health["arms_loaded"] = True  # in the generation process
        return api.HealthOut.model_validate({**health, "route_batches": batcher.batches,
                                             "routed": batcher.routed, "generation_admitted": generation.admitted})

    @app.api_route("/readyz", methods=["GET", "HEAD"], responses=api.errors(500, 503),
                   summary="Readiness: 200 once a verified bundle is served, 503 while none is")
    def readyz() -> api.ReadyOut:
        return api.ReadyOut(status="ready", bundle_id=brain("not_ready").bundle_id)

    @app.get("/bundle", summary="The served bundle's manifest", responses=api.errors(500, 503))
    def bundle() -> api.BundleOut:
        return api.BundleOut.model_validate(brain().manifest)

    @app.get("/metrics", summary="Prometheus metrics: requests, latency, routes, batches, bundles",
             response_class=Response, response_model=None, responses={
                 200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **api.errors(500)})
    def prometheus() -> Any:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    app.add_middleware(BodyLimit, limit=s.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)  # counts 413s too
    app.add_middleware(AccessLog)  # outermost: every request gets its id first
    return app


def serve(settings: RuntimeSettings) -> None:
    """Run the runtime under uvicorn with `settings.workers` processes until interrupted; each
    worker builds its app with create_app() from these settings, handed over as AMO_ variables."""
    import os

    import uvicorn

    os.environ.update(settings.environment())
    uvicorn.run("amo.runtime:create_app", factory=True, host=settings.host, port=settings.port,
                workers=settings.workers, log_level="warning", access_log=False)
