"""Prometheus metrics of the whole service, read from Redis when /metrics is scraped.

Workers are separate processes (and machines); what they did is kept in Redis by the
ledger script, so the API can report it without a push gateway: messages by provider
and outcome, retries, send latency, throttles and batches deferred for want of a
connection (dispatch.send_stats), and the depth
of each Celery queue. Callback counts are kept by
the API process itself (dispatch.callbacks).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from dispatch import store
from dispatch.send_stats import histograms


class RedisStateCollector(Collector):
    """Collects from Redis at scrape time; yields nothing when Redis is unreachable."""

    def collect(
        self,
    ) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        r = store.sync_client()
        try:
            stats = r.hgetall(store.MESSAGE_STATS_HASH)
            sends = r.hgetall(store.SEND_STATS_HASH)
            depths = [r.llen(queue) for queue in store.CELERY_QUEUES]
        except Exception:  # metrics must not fail the scrape; /healthz reports Redis
            return
        messages = CounterMetricFamily(
            "dispatch_messages",
            "Messages by provider and outcome (sent, failed, suppressed, unknown, "
            "cancelled, expired; retry counts each scheduled retry)",
            labels=["provider", "outcome"],
        )
        for key, value in sorted(stats.items()):
            provider, _, outcome = str(key).rpartition("|")
            messages.add_metric([provider, outcome], float(value))
        yield messages
        latency = HistogramMetricFamily(
            "dispatch_send_seconds",
            "Seconds each message's hand-over to the provider took: the exchange that "
            "carried it (up to 4 SMTP messages pipelined on one connection, or one HTTP "
            "request: a whole batch for batching providers)",
            labels=["provider"],
        )
        throttles = CounterMetricFamily(
            "dispatch_throttles",
            "Replies that asked to slow down (SMTP 421/450/451/454, HTTP 429/503), by provider",
            labels=["provider"],
        )
        deferred = CounterMetricFamily(
            "dispatch_batches_deferred",
            "Batch runs that found every connection slot of their provider in use for "
            "DISPATCH_SLOT_WAIT_SECONDS and went back to the broker, by provider",
            labels=["provider"],
        )
        for provider, figures in histograms(sends).items():
            if figures.buckets[-1][1]:
                latency.add_metric([provider], figures.buckets, sum_value=figures.seconds)
            throttles.add_metric([provider], figures.throttles)
            deferred.add_metric([provider], figures.deferred)
        yield latency
        yield throttles
        yield deferred
        queues = GaugeMetricFamily(
            "dispatch_queue_depth", "Tasks waiting in each Celery queue", labels=["queue"]
        )
        for queue, depth in zip(store.CELERY_QUEUES, depths, strict=True):
            queues.add_metric([queue], float(depth))
        yield queues
