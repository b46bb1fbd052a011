"""The runtime's Prometheus metrics (`GET /metrics`), on a CollectorRegistry of each app's own, so
several apps in one process (the tests) never collide.

    amo_http_requests_total{endpoint, method, status}             requests answered
    amo_http_request_duration_seconds{endpoint, method, status}   latency histogram
    amo_route_abstains_total                                      routes that abstained
    amo_route_selected_agents                                     agents selected per route (k)
    amo_route_batch_size                                          prompts per /route encoder batch
    amo_bundle_info{bundle_id}                                    the bundle served ("" when none)
    amo_bundle_swaps_total                                        bundles swapped in (the first too)
    amo_bundles_refused_total                                     bundles that failed to load

`endpoint` is the route's path template (`/route`, `/static-offline-docs`), or `unmatched`, and
`method` a standard one or `other`: a label per URL or method would let any client grow the
metrics without bound.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from amo.asgi import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
AGENT_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 16)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others: "other"


class RuntimeMetrics:
    """Every metric of one app, and the registry `/metrics` renders."""

    def __init__(self, runtime: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        labels = ["endpoint", "method", "status"]
        self.requests = Counter("amo_http_requests", "HTTP requests answered, by endpoint, method and status",
                                labels, registry=self.registry)
        self.latency = Histogram("amo_http_request_duration_seconds", "Time to answer an HTTP request",
                                 labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.abstains = Counter("amo_route_abstains", "Routes that abstained (out of scope: no agent)",
                                registry=self.registry)
        self.selected = Histogram("amo_route_selected_agents", "Agents selected per route (k; 0 when it abstains)",
                                  buckets=AGENT_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("amo_route_batch_size", "Prompts routed per /route encoder batch",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.registry.register(BundleCollector(runtime))

    def observe_route(self, route: Any) -> None:
        """Count one route answered: its k, and whether it abstained."""
        self.selected.observe(len(route.agents))
        if route.abstained:
            self.abstains.inc()

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint, method, str(status)).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class BundleCollector:
    """Read at scrape time from the Runtime: the served bundle, swaps and refusals so far."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, InfoMetricFamily

        brain = self.runtime.brain
        yield InfoMetricFamily("amo_bundle", "The bundle being served",
                               value={"bundle_id": brain.bundle_id if brain is not None else ""})
        yield CounterMetricFamily("amo_bundle_swaps", "Verified bundles swapped in (the first one included)",
                                  value=self.runtime.swaps)
        yield CounterMetricFamily("amo_bundles_refused", "Bundles refused (failed to load or verify) and "
                                  "unreadable current pointers",
                                  value=self.runtime.refusals)


def endpoint_of(scope: Scope) -> str:
    """The path template of the app route `scope` matches (by path; any method), or `unmatched`."""
    from starlette.routing import Match

    for route in getattr(scope.get("app"), "routes", []):
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return str(route.path)
    return "unmatched"


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request by endpoint, method and status (a
    request that raised counts as the 500 it becomes)."""

    def __init__(self, app: ASGIApp, metrics: RuntimeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = endpoint_of(scope)  # before the router rewrites the scope (mounts do)
        start, status = time.perf_counter(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.observe_request(endpoint, scope["method"], status, time.perf_counter() - start)
