"""Prometheus metrics of the operator, on their own registry (one per operator run).

- ``kubetune_jobs{phase}``: FineTuneJobs this replica reconciles, by phase;
- ``kubetune_reconcile_duration_seconds``: one reconcile pass (decide + act);
- ``kubetune_restarts_total{counted}``: gang restarts (counted against maxRestarts or not);
- ``kubetune_failures_total{reason}``: jobs that ended Failed, by reason;
- ``kubetune_transitions_total{phase,reason}``: phase transitions;
- ``kubetune_api_errors_total{operation}``: API calls that failed (they are retried).

The liveness endpoint is Kopf's own (``/healthz`` on the health port).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from kubetune_operator.reasons import PHASES


class _PhaseCollector:
    def __init__(self, phases: Callable[[], Iterable[str]]) -> None:
        self._phases = phases

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("kubetune_jobs", "FineTuneJobs reconciled by this operator, by phase", labels=["phase"])
        counts = {p: 0 for p in PHASES}
        for p in self._phases():
            counts[p] = counts.get(p, 0) + 1
        for p, n in counts.items():
            g.add_metric([p], n)
        yield g


class Metrics:
    def __init__(self, phases: Callable[[], Iterable[str]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_PhaseCollector(phases))
        self.reconcile_seconds = Histogram(
            "kubetune_reconcile_duration_seconds",
            "Duration of one reconcile pass of a FineTuneJob (decide and act)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.restarts = Counter("kubetune_restarts_total", "Gang restarts", ["counted"], registry=self.registry)
        self.failures = Counter("kubetune_failures_total", "FineTuneJobs that ended Failed, by reason", ["reason"], registry=self.registry)
        self.transitions = Counter("kubetune_transitions_total", "Phase transitions", ["phase", "reason"], registry=self.registry)
        self.api_errors = Counter("kubetune_api_errors_total", "Failed API calls (retried)", ["operation"], registry=self.registry)
        self._server: Any = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> int | None:
        """Serve /metrics on ``port`` (0 picks a free port); returns the port."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
