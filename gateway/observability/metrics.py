"""Prometheus metrics of one gateway.

With several workers each process writes its samples to ``PROMETHEUS_MULTIPROC_DIR`` (set by
the supervisor before the workers start) and any worker's ``/metrics`` aggregates all of them,
so one scrape shows the whole instance. Gauges say how they combine across processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from ..tls import TlsReloader

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
STALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._extra: list[Collector] = []
        r = self.registry
        self.connections_active = Gauge(
            "wshub_connections_active",
            "Open Socket.IO connections",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.connections_opened = Counter(
            "wshub_connections_opened", "Connections accepted", registry=r
        )
        self.connections_closed = Counter(
            "wshub_connections_closed", "Connections ended, by reason", ["reason"], registry=r
        )
        self.connections_refused = Counter(
            "wshub_connections_refused", "Connections refused, by reason", ["reason"], registry=r
        )
        self.events = Counter(
            "wshub_events_received",
            "Client events, by event and outcome (ok or error code)",
            ["event", "outcome"],
            registry=r,
        )
        self.errors = Counter("wshub_errors", "system:error sent, by code", ["code"], registry=r)
        self.rate_limited = Counter(
            "wshub_rate_limited_events", "Events refused by the rate limit", registry=r
        )
        self.oversize = Counter(
            "wshub_oversize_events", "Events refused for their size", registry=r
        )
        self.delivered = Counter(
            "wshub_messages_delivered",
            "Messages sent to clients, by event",
            ["event"],
            registry=r,
        )
        self.latency = Histogram(
            "wshub_event_duration_seconds",
            "Time to handle a client event",
            ["event"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.heartbeat_warnings = Counter(
            "wshub_heartbeat_warnings", "system:heartbeat-warning sent", registry=r
        )
        self.heartbeat_timeouts = Counter(
            "wshub_heartbeat_timeouts", "Connections closed for missed heartbeats", registry=r
        )
        self.tls_not_after = Gauge(
            "wshub_tls_cert_not_after_timestamp_seconds",
            "Expiry of the served certificate (Unix time)",
            registry=r,
            multiprocess_mode="min",
        )
        self.tls_serial = Gauge(
            "wshub_tls_cert_serial_info",
            "Serial of the served certificate (label)",
            ["serial"],
            registry=r,
            multiprocess_mode="max",
        )
        self.loop_lag = Histogram(
            "wshub_event_loop_lag_seconds",
            "How late the event loop ran a timer (it was busy meanwhile), sampled every 0.1 s",
            buckets=STALL_BUCKETS,
            registry=r,
        )
        self.gc_pauses = Histogram(
            "wshub_gc_pause_seconds",
            "Garbage collections (the event loop stands still meanwhile), by generation",
            ["generation"],
            buckets=STALL_BUCKETS,
            registry=r,
        )
        self.tls_handshakes_started = Counter(
            "wshub_tls_handshakes_started", "TLS ClientHellos received", registry=r
        )
        self.tls_handshakes_completed = Counter(
            "wshub_tls_handshakes_completed",
            "TLS handshakes completed (started minus completed: failed or in flight)",
            registry=r,
        )
        self.tls_errors = Counter(
            "wshub_tls_connection_errors", "TLS connection errors, by kind", ["kind"], registry=r
        )
        self.store_errors = Counter(
            "wshub_store_errors", "Presence-store operations that failed", registry=r
        )
        self.recoveries = Counter(
            "wshub_sessions_recovered",
            "Sessions resumed by their client (connection state recovery), by where",
            ["where"],
            registry=r,
        )
        self.recovery_failures = Counter(
            "wshub_sessions_recovery_failed",
            "Resume attempts that got a fresh session instead, by why",
            ["why"],
            registry=r,
        )
        self.sessions_expired = Counter(
            "wshub_sessions_expired",
            "Waiting sessions that ended without being resumed, by why",
            ["why"],
            registry=r,
        )
        self.events_held = Counter(
            "wshub_recovery_events_held", "Events kept for sessions that are away", registry=r
        )
        self.events_dropped = Counter(
            "wshub_recovery_events_dropped",
            "Events for a waiting session that could not be kept (it ended instead)",
            registry=r,
        )
        self.events_replayed = Counter(
            "wshub_recovery_events_replayed", "Events sent again to resumed sessions", registry=r
        )
        self.backplane_healthy = Gauge(
            "wshub_backplane_healthy",
            "1 when the cross-process backplane answers its probe",
            registry=r,
            multiprocess_mode="min",
        )

    def add_collector(self, collector: Collector) -> None:
        """A collector read at scrape time. With several workers it reports the worker that
        answers the scrape (each worker reloads its own TLS material)."""
        self._extra.append(collector)
        self.registry.register(collector)

    def render(self) -> bytes:
        directory = os.environ.get(MULTIPROC_ENV)
        if not directory:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        for collector in self._extra:
            registry.register(collector)
        return generate_latest(registry)


class TlsReloadCollector(Collector):
    def __init__(self, reloader: TlsReloader) -> None:
        self._reloader = reloader

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "wshub_tls_reloads", "Certificate reloads of this worker, by result", labels=["result"]
        )
        family.add_metric(["ok"], self._reloader.reloads_ok)
        family.add_metric(["rejected"], self._reloader.reloads_rejected)
        yield family
