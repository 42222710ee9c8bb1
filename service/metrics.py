"""Prometheus metrics (prefix `spul_`), named after vLLM/TGI's, on a registry owned by one app.

Per-profile series carry exactly one `profile` label; past `max_profile_labels` distinct
profiles new ones are reported as "other" so cardinality stays bounded.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

OTHER = "other"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ProfileLabels:
    """Maps profile ids to label values: the first N seen keep their name, later ones are 'other'."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, profile: str) -> str:
        with self._lock:
            if profile in self._seen:
                return profile
            if len(self._seen) < self.limit:
                self._seen.add(profile)
                return profile
        return OTHER


class Metrics:
    def __init__(self, *, max_profile_labels: int = 100) -> None:
        self.registry = CollectorRegistry()
        self.profile_label = ProfileLabels(max_profile_labels)
        r = self.registry
        self.requests = Counter(
            "spul_requests", "Finished requests", ["profile", "finish_reason"], registry=r
        )
        self.queue_seconds = Histogram(
            "spul_request_queue_seconds", "Time waiting before prefill", buckets=LATENCY_BUCKETS, registry=r
        )
        self.prefill_seconds = Histogram(
            "spul_prefill_seconds", "Prefill forward time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.decode_seconds = Histogram(
            "spul_decode_seconds", "Decode forward time per step", buckets=TOKEN_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "spul_time_to_first_token_seconds", "Submit to first token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "spul_inter_token_latency_seconds", "Time between tokens", buckets=TOKEN_BUCKETS, registry=r
        )
        self.e2e = Histogram(
            "spul_e2e_request_latency_seconds", "Submit to finish", buckets=LATENCY_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter("spul_prompt_tokens", "Query tokens prefilled", ["profile"], registry=r)
        self.generation_tokens = Counter(
            "spul_generation_tokens", "Tokens generated", ["profile"], registry=r
        )
        self.running = Gauge("spul_requests_running", "Requests in the running batch", registry=r)
        self.waiting = Gauge("spul_requests_waiting", "Requests queued", registry=r)
        self.batch_size = Histogram("spul_batch_size", "Rows per decode step", buckets=BATCH_BUCKETS, registry=r)
        self.profiles_loaded = Gauge("spul_profiles_loaded", "Active profiles resident", registry=r)
        self.artifact_load_seconds = Histogram(
            "spul_artifact_load_seconds", "Load + validate one artifact", buckets=LATENCY_BUCKETS, registry=r
        )
        self.upload_failures = Counter(
            "spul_upload_failures", "Rejected artifact uploads", ["reason"], registry=r
        )
        self.rejected = Counter(
            "spul_requests_rejected", "Requests refused (4xx, 503), by reason: the error's code", ["reason"], registry=r
        )
        self.prefix_cache_bytes = Gauge("spul_prefix_cache_bytes", "Bytes held by the prefix cache", registry=r)
        self.prefix_cache_queries = Counter(
            "spul_prefix_cache_queries", "Soft-prompt positions looked up in the prefix cache", registry=r
        )
        self.prefix_cache_hits = Counter(
            "spul_prefix_cache_hits", "Soft-prompt positions found in the prefix cache", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
