"""Prometheus metrics of one node (served at /metrics): request counts and latencies per operation."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Latency buckets (seconds) spanning loopback round trips to quorum timeouts.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class NodeMetrics:
    """The node's metric families, in a registry of their own (never the process-global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("dynamod_requests", "HTTP requests by operation and status code",
                                ["op", "code"], registry=self.registry)
        self.latency = Histogram("dynamod_request_seconds", "HTTP request latency by operation",
                                 ["op"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.corrupt_records = Counter("dynamod_corrupt_records", "stored records that failed to decode",
                                       registry=self.registry)
        self.storage_batches = Gauge("dynamod_storage_batches", "group flushes (fsyncs) since start",
                                     registry=self.registry)
        self.storage_updates = Gauge("dynamod_storage_updates", "record updates since start",
                                     registry=self.registry)
        self.read_repairs = Counter("dynamod_read_repairs", "replicas sent reconciled versions after a read",
                                    registry=self.registry)
        self.read_repairs_deferred = Counter("dynamod_read_repairs_deferred",
                                             "read repairs skipped by admission control (anti-entropy catches up)",
                                             registry=self.registry)
        self.oversized_key_writes = Counter("dynamod_oversized_key_writes",
                                            "writes that left a key's stored versions past key_size_warning",
                                            registry=self.registry)
        self.handoffs = Counter("dynamod_handoffs", "fallback copies acknowledged by their owner",
                                registry=self.registry)
        self.batch_seconds = Histogram("dynamod_storage_batch_seconds",
                                       "time from handing a group of updates to the flusher to their durability",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("dynamod_storage_batch_size", "updates per group flush",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.http_connections = Gauge("dynamod_http_connections", "open HTTP client connections",
                                      registry=self.registry)
        self.http_closed = Counter("dynamod_http_connections_closed",
                                   "HTTP connections closed or refused by a limit, by reason (header_timeout, "
                                   "body_timeout, idle, unread_answers, connection_limit)",
                                   ["reason"], registry=self.registry)
        self.peers_reachable = Gauge("dynamod_peers_reachable", "peers with an open connection",
                                     registry=self.registry)
