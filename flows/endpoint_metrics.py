"""The endpoint's Prometheus metrics (``GET /metrics``), in a registry of its own per service.

Labels take only served pipeline names (any other name is ``unknown``), so a client cannot grow
the series without bound.

- ``cifar_endpoint_requests_total{route,pipeline,code}``       every answered request
- ``cifar_endpoint_errors_total{route,pipeline,code}``         those with a 4xx/5xx status
- ``cifar_endpoint_request_seconds{route}``                    latency histogram
- ``cifar_endpoint_images_total{pipeline}``                    images scored
- ``cifar_endpoint_batch_images`` / ``..._batch_seconds``      batch sizes and scoring time
- ``cifar_endpoint_model_version{pipeline,version}``           1 for the run each pipeline serves
- ``cifar_endpoint_swaps_total{pipeline}``                     hot swaps done
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series beside each counter (process-wide)
        self.registry = r = CollectorRegistry()
        self.requests = Counter("cifar_endpoint_requests", "Requests answered", ["route", "pipeline", "code"], registry=r)
        self.errors = Counter("cifar_endpoint_errors", "Requests answered with a 4xx or 5xx status",
                              ["route", "pipeline", "code"], registry=r)
        self.latency = Histogram("cifar_endpoint_request_seconds", "Time from routing to response",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("cifar_endpoint_images", "Images scored", ["pipeline"], registry=r)
        self.batch_images = Histogram("cifar_endpoint_batch_images", "Images per scoring batch",
                                      buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("cifar_endpoint_batch_seconds", "Seconds to score one batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.version = Gauge("cifar_endpoint_model_version", "1 for the run id each pipeline serves",
                             ["pipeline", "version"], registry=r)
        self.swaps = Counter("cifar_endpoint_swaps", "Champions swapped in while serving", ["pipeline"], registry=r)
        # each label set's series, looked up once (``labels()`` validates and locks on every call)
        self._request_series: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        self._image_series: dict[str, Any] = {}

    def request(self, route: str, pipeline: str, code: int, seconds: float) -> None:
        series = self._request_series.get((route, pipeline, code))
        if series is None:
            errors = self.errors.labels(route, pipeline, str(code)) if code >= 400 else None
            series = self._request_series[(route, pipeline, code)] = (
                self.requests.labels(route, pipeline, str(code)), errors, self.latency.labels(route))
        requests, errors, latency = series
        requests.inc()
        if errors is not None:
            errors.inc()
        latency.observe(seconds)

    def scored(self, pipeline: str, images: int) -> None:
        series = self._image_series.get(pipeline)
        if series is None:
            series = self._image_series[pipeline] = self.images.labels(pipeline)
        series.inc(images)

    def batch(self, images: int, _requests: int, seconds: float) -> None:
        self.batch_images.observe(images)
        self.batch_seconds.observe(seconds)

    def swapped(self, pipeline: str, old: Any, new: Any) -> None:
        if old is not None:
            self.swaps.labels(pipeline).inc()
            self.version.remove(pipeline, old.ref.run_id)
        self.version.labels(pipeline, new.ref.run_id).set(1)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
