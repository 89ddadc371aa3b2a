"""What one running API holds: settings, the gallery, the embedders, the API keys, the metrics registry."""

from __future__ import annotations

import hashlib
import hmac

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gallery import Gallery
from gallery.audit import AuditLog
from gallery.privacy import RetentionPolicy
from gallery.review import ReviewQueue
from reid.embedder import BaseEmbedder
from services.batching import MicroBatcher
from services.settings import ApiKey, Settings


class KeyRing:
    """API keys held as SHA-256 digests; a lookup compares the given key's digest with every key's in constant
    time, so the answer's timing does not show how much of a key was right or which key matched. (The plain keys
    still live in ``Settings.api_keys``, which other apps built from the same settings read.)"""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = [(self._digest(k.key), ApiKey("", k.name, k.scopes)) for k in keys]

    @staticmethod
    def _digest(key: str) -> bytes:
        return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()

    def find(self, given: str) -> ApiKey | None:
        d, found = self._digest(given), None
        for digest, key in self._keys:
            if hmac.compare_digest(digest, d):  # no early exit: every key is compared
                found = key
        return found


class ServiceState:
    def __init__(self, settings: Settings, gallery: Gallery, embedders: dict[str, BaseEmbedder]) -> None:
        self.settings, self.gallery, self.embedders = settings, gallery, embedders
        self.keys = KeyRing(settings.api_keys)
        self.audit = AuditLog(gallery.Session)
        # every request's audit row, group-committed: one transaction for all rows queued meanwhile
        # (held through a database outage and written when it returns: gallery.audit)
        self.audit_writer = MicroBatcher(self.audit.write_or_hold, max_batch=256, name="audit-writer")
        self.review = ReviewQueue(gallery.Session)
        self.retention = RetentionPolicy(settings.retention_days, dict(settings.retention_per_store))
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "reid_requests_total", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram("reid_request_seconds", "request latency", ["route"], registry=self.registry)
        held = Gauge("reid_audit_held", "audit rows held back by a database outage", registry=self.registry)
        held.set_function(lambda: self.audit.held)
        lost = Gauge(
            "reid_audit_lost", "audit rows given up (beyond the hold, or refused)", registry=self.registry
        )
        lost.set_function(lambda: self.audit.lost)
        self.batch_sizes = Histogram(
            "reid_embed_batch_size",
            "images per model call of the micro-batcher (services.batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
