"""``cifar endpoint``'s HTTP service: pipelines' champions over TF Serving's REST API (FastAPI).

Routes (docs/endpoint.md):

- ``GET  /v1/models/NAME[/versions/RUN_ID]``            model_version_status
- ``GET  /v1/models/NAME[/versions/RUN_ID]/metadata``   the signature
- ``POST /v1/models/NAME[/versions/RUN_ID]:predict``    instances/inputs -> predictions/outputs
- ``GET  /healthz`` (alive), ``GET /readyz`` (every pipeline serves a verified model), ``GET /metrics``

The logic is in ``tasks.predict``: ``protocol`` (shapes and bounds), ``batching`` (one scoring
thread, requests batched), ``live`` (the champion, hot-swapped). This module reads bodies with a
byte cap, picks the model, awaits the batch and writes JSON; every answer that a model gave names
its run (``model_version`` and ``X-Model-Version``). Every refusal is ``{"error": "..."}`` with a
4xx status; anything unexpected is a 500 with the same shape, its traceback only in the log.

``POST /v1/models/...`` is answered by ``Endpoint`` itself, on the bare ASGI messages: a one-image
predict costs the server about as much CPU in FastAPI's and Starlette's per-request layers
(middleware, routing, the Request object) as in reading and scoring its image. Every other request
goes to the FastAPI app, with the same error shapes and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.concurrency import run_in_threadpool

from flows.endpoint_metrics import Metrics
from tasks.predict import protocol
from tasks.predict.batching import Batcher
from tasks.predict.errors import ModelFileError, NoModelError, RequestError
from tasks.predict.live import LiveModel

log = logging.getLogger("cifar.endpoint")
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
PARSE_IN_THREAD = 64 * 1024  # bodies above this are parsed off the event loop
VERSION_HEADER = "X-Model-Version"


@dataclass(frozen=True)
class EndpointConfig:
    """How the service batches and watches; ``limits`` bound each request."""

    max_batch: int = 256  # images per scoring call
    max_wait: float = 0.002  # seconds a batch waits for requests already arriving
    poll: float = 1.0  # seconds between looks at each registry.json
    retry: float = 10.0  # seconds before a champion that failed to load is tried again
    threads: int | None = None  # LiteRT's threads for batches over engine.SMALL_BATCH (default: the cores)
    limits: protocol.Limits = protocol.Limits()


def _json(doc: Any, status: int = 200, version: str | None = None) -> Response:
    headers = {VERSION_HEADER: version} if version else None
    return Response(orjson.dumps(doc), status, headers, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


class ClientGone(Exception):
    """The client closed the connection before its request body arrived."""


async def read_capped(receive: Callable[[], Awaitable[dict]], declared: bytes | None, cap: int) -> bytes:
    """The body of an ASGI request, refused (413) past ``cap`` bytes: by its Content-Length
    (``declared``) before reading, or as soon as the bytes read pass the cap."""
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise RequestError(f"request body of {int(declared):,} bytes is larger than the {cap:,} bytes allowed", 413)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise RequestError(f"request body is larger than the {cap:,} bytes allowed", 413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Service:
    """The served pipelines, their batcher and metrics; the routes' logic."""

    def __init__(self, artifacts_dir: str | Path, pipelines: list[str], load: Callable[[Any], Any],
                 config: EndpointConfig = EndpointConfig()):
        self.config, self.metrics = config, Metrics()
        self.batcher = Batcher(config.max_batch, config.max_wait, on_batch=self.metrics.batch)
        self.live = {p: LiveModel(artifacts_dir, p, load, poll=config.poll, retry=config.retry,
                                  on_swap=self.metrics.swapped)
                     for p in pipelines}
        self._decodes = asyncio.Semaphore(2)  # PNG/JPEG decodes at a time: bounds their memory

    def start(self) -> None:
        for live in self.live.values():
            live.start()

    def stop(self) -> None:
        for live in self.live.values():
            live.stop()
        self.batcher.close()

    def pipeline(self, name: str) -> LiveModel:
        live = self.live.get(name)
        if live is None:
            served = ", ".join(self.live)
            raise RequestError(f"no model named {name[:128]!r}; this endpoint serves: {served}", 404)
        return live

    async def model(self, name: str, version: str | None) -> Any:
        live = self.pipeline(name)
        if version is None:
            model = live.current  # read once: this request keeps this model, whatever swaps
            if model is None:
                why = "loading" if live.loading else (live.error or "no verified model yet")
                raise RequestError(f"model {name!r} is not available yet: {why}", 503)
            return model
        if not NAME.fullmatch(version):
            raise RequestError(f"no version {version[:128]!r} of {name!r}: a version is a run id", 404)
        try:
            return await run_in_threadpool(live.pinned, version)
        except NoModelError as exc:
            raise RequestError(str(exc), 404) from None
        except ModelFileError as exc:
            raise RequestError(str(exc), 503) from None

    async def predict(self, read_body: Callable[[int], Awaitable[bytes]], name: str, version: str | None) -> Response:
        """Score the request whose body ``read_body(cap)`` reads, with ``name``'s model (its
        champion, or run ``version``)."""
        limits = self.config.limits
        with self.batcher.arriving() as ticket:
            body = await read_body(limits.max_body_bytes)
            model = await self.model(name, version)
            shape = model.input_shape

            def parse() -> protocol.PredictRequest:
                return protocol.parse_request(body, shape, limits)

            parsed = await run_in_threadpool(parse) if len(body) > PARSE_IN_THREAD else parse()
            if isinstance(parsed.images, list) and any(isinstance(i, bytes) for i in parsed.images):
                async with self._decodes:
                    x = await run_in_threadpool(protocol.decode_images, parsed, shape, limits)
            else:
                x = protocol.decode_images(parsed, shape, limits)
            future = self.batcher.submit(model, x, ticket, asyncio.get_running_loop())
        answered_by, probs = await future
        version_id = answered_by.ref.run_id
        self.metrics.scored(name, len(x))
        return _json(protocol.predict_response(probs, answered_by.classes, parsed.columnar, version_id),
                     version=version_id)

    async def observed(self, route: str, pipeline: str | None, call: Callable[[], Awaitable[Response]]) -> Response:
        """``call()``'s response, or its error as ``{"error": ...}``; counted in the metrics."""
        started = time.perf_counter()
        try:
            response = await call()
        except RequestError as exc:
            response = _error(exc.status, str(exc))
        except ClientGone:
            response = _error(499, "the client closed the connection before its request arrived")
        except Exception:  # noqa: BLE001 - a 500 in the same shape; the traceback goes to the log only
            log.exception("%s %s failed", route, pipeline)
            response = _error(500, "internal error while answering; the server's log has the details")
        label = pipeline if pipeline in self.live else ("" if pipeline is None else "unknown")
        self.metrics.request(route, label, response.status_code, time.perf_counter() - started)
        return response

    async def status(self, name: str, version: str | None) -> Response:
        live = self.pipeline(name)
        if version is None and live.current is None:
            state = "LOADING" if live.loading or live.error is None else "END"
            return _json(protocol.version_status("", state, live.error or "loading"))
        model = await self.model(name, version)
        return _json(protocol.version_status(model.ref.run_id), version=model.ref.run_id)

    async def metadata(self, name: str, version: str | None) -> Response:
        model = await self.model(name, version)
        doc = protocol.metadata(name, model.ref.run_id, model.input_shape, model.classes)
        return _json(doc, version=model.ref.run_id)

    def ready(self) -> Response:
        waiting = {p: live.error or ("loading" if live.loading else "not loaded yet")
                   for p, live in self.live.items() if live.current is None}
        if waiting:
            return _error(503, "not ready: " + "; ".join(f"{p}: {why}" for p, why in waiting.items()))
        return _json({"status": "ready", "models": {p: live.version for p, live in self.live.items()}})


def _split(tail: str) -> tuple[str, str | None, str]:
    """``NAME[/versions/V][/metadata|:predict]`` -> (name, version, action)."""
    action = ""
    if tail.endswith(":predict"):
        tail, action = tail[: -len(":predict")], "predict"
    elif tail.endswith("/metadata"):
        tail, action = tail[: -len("/metadata")], "metadata"
    name, sep, version = tail.partition("/versions/")
    if "/" in name or (sep and (not version or "/" in version)):
        raise RequestError(f"no route /v1/models/{tail[:200]}: see GET /v1/models/NAME, "
                           "/v1/models/NAME/metadata, POST /v1/models/NAME:predict", 404)
    return name, (version if sep else None), action


def _pipeline_label(tail: str) -> str:
    return tail.split("/")[0].split(":")[0]


async def _send(send: Callable[[dict], Awaitable[None]], response: Response) -> None:
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class Endpoint:
    """The ASGI app: ``POST /v1/models/...`` answered here, every other request (and the
    lifespan) by the FastAPI app ``api``."""

    PREFIX = "/v1/models/"

    def __init__(self, service: Service, api: FastAPI):
        self.service, self.api, self.state = service, api, api.state

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith(self.PREFIX):
            await self.api(scope, receive, send)
            return
        tail = scope["path"][len(self.PREFIX):]
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)

        async def read_body(cap: int) -> bytes:
            return await read_capped(receive, declared, cap)

        async def call() -> Response:
            name, version, action = _split(tail)
            if action != "predict":
                raise RequestError(f"POST /v1/models/{tail[:200]}: only :predict takes a POST", 405)
            return await self.service.predict(read_body, name, version)
        await _send(send, await self.service.observed("predict", _pipeline_label(tail), call))


def _api(service: Service) -> FastAPI:
    """The FastAPI app for every route but ``POST /v1/models/...``, and the service's lifespan."""
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="cifar endpoint", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    # Starlette routes inside the FastAPI app: a Request in, a Response out, none of FastAPI's
    # per-request dependency solving.
    async def get_model(request: Request) -> Response:
        tail = request.path_params["tail"]

        async def call() -> Response:
            name, version, action = _split(tail)
            if action == "predict":
                raise RequestError(f"{tail[:200]} takes a POST with a JSON body", 405)
            if action == "metadata":
                return await service.metadata(name, version)
            return await service.status(name, version)
        return await service.observed("status", _pipeline_label(tail), call)

    async def healthz(_request: Request) -> Response:
        return _json({"status": "alive"})

    async def readyz(_request: Request) -> Response:
        return service.ready()

    async def metrics(_request: Request) -> Response:
        body, content_type = service.metrics.exposition()
        return Response(body, media_type=content_type)

    app.router.add_route("/v1/models/{tail:path}", get_model, methods=["GET"])
    app.router.add_route("/healthz", healthz, methods=["GET"])
    app.router.add_route("/readyz", readyz, methods=["GET"])
    app.router.add_route("/metrics", metrics, methods=["GET"])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        message = {404: "no such route: see GET /v1/models/NAME, /v1/models/NAME/metadata, "
                        "POST /v1/models/NAME:predict, /healthz, /readyz, /metrics",
                   405: "method not allowed on this route"}.get(exc.status_code, str(exc.detail))
        service.metrics.request("other", "", exc.status_code, 0.0)
        return _error(exc.status_code, message)

    return app


def create_app(artifacts_dir: str | Path, pipelines: list[str], load: Callable[[Any], Any] | None = None,
               config: EndpointConfig = EndpointConfig()) -> Endpoint:
    """The ASGI app serving ``pipelines``' champions; ``load`` makes a model from a ModelRef
    (default: the LiteRT ``Scorer``; the benchmark's baseline passes a Keras one)."""
    if load is None:
        from tasks.predict.engine import Scorer

        def load(ref):  # stderr left alone: other threads are logging to it
            return Scorer(ref, threads=config.threads, quiet=False)
    service = Service(artifacts_dir, pipelines, load, config)
    return Endpoint(service, _api(service))
