"""Prometheus metrics: request counts and per-stage latencies, in a registry per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class AppMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("imgsearch_requests_total", "HTTP requests", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("imgsearch_request_seconds", "request latency", ["route"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.stage = Histogram("imgsearch_query_stage_seconds", "time per query stage", ["mode", "stage"],
                               registry=self.registry,
                               buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))

    def observe_stages(self, mode: str, stage_ms: dict[str, float]) -> None:
        for stage, ms in stage_ms.items():
            self.stage.labels(mode, stage).observe(ms / 1000)
