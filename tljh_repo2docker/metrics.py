"""Prometheus metrics of the service, served at ``{base_url}metrics``.

They live in their own registry, not prometheus_client's global one: the
service may share a process with other code (tests, TLJH) that registers
metrics of its own, and ``metrics`` shows exactly what is defined here.

Counters and histograms are updated where things happen (the build manager's
hooks, the request log); the gauges describe the present and are set when
Prometheus scrapes (:func:`update_gauges`), so they cannot drift.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .builds.base import FINAL_PHASES
from .db import store

REGISTRY = CollectorRegistry(auto_describe=True)

BUILDS_STARTED = Counter(
    "tljh_repo2docker_builds_started",
    "Builds that left the queue and started",
    registry=REGISTRY,
)

BUILDS_FINISHED = Counter(
    "tljh_repo2docker_builds_finished",
    "Builds that ended, by final phase (built, failed, cancelled)",
    ["phase"],
    registry=REGISTRY,
)

BUILD_DURATION = Histogram(
    "tljh_repo2docker_build_duration_seconds",
    "Time from the start of a build to its end, by final phase",
    ["phase"],
    # repo2docker builds take from seconds (cached layers) to an hour
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf")),
    registry=REGISTRY,
)

BUILDS_QUEUED = Gauge(
    "tljh_repo2docker_builds_queued",
    "Builds waiting in the queue",
    registry=REGISTRY,
)

BUILDS_RUNNING = Gauge(
    "tljh_repo2docker_builds_running",
    "Builds running now",
    registry=REGISTRY,
)

LOG_STREAM_CLIENTS = Gauge(
    "tljh_repo2docker_log_stream_clients",
    "Clients following a build log (Server-Sent Events)",
    registry=REGISTRY,
)

ENVIRONMENTS = Gauge(
    "tljh_repo2docker_environments",
    "Environments in the database, whatever their status",
    registry=REGISTRY,
)

REQUEST_DURATION = Histogram(
    "tljh_repo2docker_request_duration_seconds",
    "Time to answer HTTP requests, by method, handler and status code",
    ["method", "handler", "status"],
    registry=REGISTRY,
)

# Every final phase shows, as 0, before its first build.
for _phase in sorted(FINAL_PHASES):
    BUILDS_FINISHED.labels(phase=_phase)

# Methods Tornado routes; anything else is one label value, so that clients
# sending made-up methods cannot grow the number of series without bound.
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def build_started(uid):
    """``BuildManager.on_started`` hook."""
    BUILDS_STARTED.inc()


def build_finished(uid, phase, seconds):
    """``BuildManager.on_finished`` hook."""
    BUILDS_FINISHED.labels(phase=phase).inc()
    BUILD_DURATION.labels(phase=phase).observe(seconds)


def observe_request(handler):
    """Record the duration of a finished request (called from the request log)."""
    method = handler.request.method if handler.request.method in _METHODS else "other"
    REQUEST_DURATION.labels(
        method=method,
        handler=type(handler).__name__,
        status=str(handler.get_status()),
    ).observe(handler.request.request_time())


async def update_gauges(build_manager, sessions):
    """Set the gauges that describe the present; called on each scrape."""
    BUILDS_QUEUED.set(build_manager.queued_count)
    BUILDS_RUNNING.set(build_manager.running_count)
    LOG_STREAM_CLIENTS.set(build_manager.subscriber_count)
    ENVIRONMENTS.set(await store.count_environments(sessions))
