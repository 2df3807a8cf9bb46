"""Prometheus metrics, in a registry of their own so several servers can live in one process (tests)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .online_calibration import Calibrator
    from .scoring import Scorer

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ltr_requests", "RPCs handled, by method and status code", ["method", "code"], registry=r)
        self.latency = Histogram("ltr_request_latency_seconds", "RPC latency in the server", ["method"], buckets=_LATENCY_BUCKETS, registry=r)
        self.items = Counter("ltr_items", "Items scored or ordered, by method", ["method"], registry=r)
        self.batch_size = Histogram("ltr_batch_size", "Rows per model call", buckets=_BATCH_BUCKETS, registry=r)
        self.inference = Histogram("ltr_inference_seconds", "Time per model call, tokenization included", buckets=_LATENCY_BUCKETS, registry=r)
        self.rejected = Counter("ltr_rejected_items", "Items refused because the queue was full", registry=r)
        self.warmup = Gauge("ltr_warmup_seconds", "Time the model took to warm up at start-up, before health reported SERVING", registry=r)
        self.model = Gauge("ltr_model_info", "The serving model (value is always 1)", ["model_version", "provider", "model_sha256"], registry=r)

    def watch(self, scorer: Scorer) -> None:
        """Export the scorer's own counters (queue, cache, drops), read at scrape time."""
        self.registry.register(_ScorerCollector(scorer))

    def watch_calibration(self, calibrator: Calibrator) -> None:
        """Export each served model's calibration (version, taus, counts), read at scrape time."""
        self.registry.register(_CalibrationCollector(calibrator))

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.inference.observe(seconds)

    def serve_http(self, host: str, port: int) -> int:
        """Start /metrics on host:port (0 picks a free port); return the port."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        if getattr(self, "_http", None) is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _ScorerCollector(Collector):
    def __init__(self, scorer: Scorer):
        self.scorer = scorer

    def collect(self) -> Iterator[Metric]:
        cache, batcher = self.scorer.cache, self.scorer.batcher
        lookups = cache.hits + cache.misses
        yield GaugeMetricFamily("ltr_queue_depth", "Items waiting for the model", value=batcher.queue_depth)
        yield CounterMetricFamily("ltr_cache_hits", "Score cache lookups that hit", value=cache.hits)
        yield CounterMetricFamily("ltr_cache_lookups", "Score cache lookups", value=lookups)
        yield GaugeMetricFamily("ltr_cache_hit_ratio", "Score cache hits / lookups since start", value=cache.hits / lookups if lookups else 0.0)
        yield GaugeMetricFamily("ltr_cache_entries", "Scores held in the cache", value=len(cache))
        dropped = CounterMetricFamily("ltr_dropped_items", "Items dropped before inference, by reason", labels=["reason"])
        dropped.add_metric(["deadline"], batcher.dropped_expired)
        dropped.add_metric(["cancelled"], batcher.dropped_cancelled)
        yield dropped


class _CalibrationCollector(Collector):
    def __init__(self, calibrator: Calibrator):
        self.calibrator = calibrator

    def collect(self) -> Iterator[Metric]:
        statuses = self.calibrator.statuses()
        info = GaugeMetricFamily("ltr_calibration_info", "The calibration serving each model (value 1; version empty: the base ranker)",
                                 labels=["served_model", "version"])
        seen = CounterMetricFamily("ltr_calibration_observations", "Finished requests observed, by served model", labels=["served_model"])
        held = GaugeMetricFamily("ltr_calibration_held", "Observations held in the model's reservoir", labels=["served_model"])
        tau = GaugeMetricFamily("ltr_calibration_tau_b", "Censored tau-b on the last refit's held-out observations: the base "
                                "ranker's and the serving calibration's (NaN before the first refit)", labels=["served_model", "ranker"])
        refits = CounterMetricFamily("ltr_calibration_refits", "Refits run, by served model", labels=["served_model"])
        promotions = CounterMetricFamily("ltr_calibration_promotions", "Refits promoted to serve, by served model", labels=["served_model"])
        for st in statuses:
            info.add_metric([st.model, st.version], 1)
            seen.add_metric([st.model], st.observations)
            held.add_metric([st.model], st.held)
            tau.add_metric([st.model, "base"], st.base_tau)
            tau.add_metric([st.model, "serving"], st.serving_tau)
            refits.add_metric([st.model], st.refits)
            promotions.add_metric([st.model], st.promotions)
        yield from (info, seen, held, tau, refits, promotions)
        yield GaugeMetricFamily("ltr_calibration_state_errors", "State files refused at start-up (corrupt or unreadable)",
                                value=len(self.calibrator.load_errors))
