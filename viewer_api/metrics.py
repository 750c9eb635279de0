"""The viewer's Prometheus metrics: the index's size and freshness and the indexer's work,
on top of what every service has (``common.metrics``).

Sizes are read when scraped (from the scrape's thread: a length or a number,
never a walk of the index); durations and lags are observed as the indexer
works (``Indexer``'s observer).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram

from baton.common.metrics import IO_BUCKETS, ServiceMetrics
from baton.viewer_api.index import Index
from baton.viewer_api.indexer import Indexer, IndexerObserver

# A full scan of 100,000 runs takes seconds; on NFS, minutes.
SCAN_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip


class ViewerMetrics(ServiceMetrics, IndexerObserver):
    """The viewer's registry of series; the indexer reports to it as its observer."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.index_runs = Gauge("baton_viewer_index_runs", "Runs in the viewer's index.", registry=r)
        self.index_checkpoints = Gauge(
            "baton_viewer_index_checkpoints", "Checkpoints in the viewer's index.", registry=r
        )
        self.unwatched = Gauge(
            "baton_viewer_unwatched_directories",
            "Directories inotify could not watch (out of watches): their changes show only at a "
            "reconciliation scan. Raise fs.inotify.max_user_watches.",
            registry=r,
        )
        self.last_scan = Gauge(
            "baton_viewer_last_scan_timestamp_seconds",
            "When the last full scan of both trees finished (time() minus it: how old the safety net is).",
            registry=r,
        )
        self.lag = Histogram(
            "baton_viewer_index_lag_seconds",
            "Time from inotify reporting a change to the index showing it (freshness of ListJobs).",
            buckets=IO_BUCKETS,
            registry=r,
        )
        self.scan = Histogram(
            "baton_viewer_scan_seconds",
            "Time of one scan of both trees (the cold start's and every reconciliation's).",
            buckets=SCAN_BUCKETS,
            registry=r,
        )
        self.reconcile = Histogram(
            "baton_viewer_reconcile_seconds",
            "Time of one reconciliation: the scan, then the index made to match it.",
            buckets=SCAN_BUCKETS,
            registry=r,
        )

    def watch(self, index: Index, indexer: Indexer) -> None:
        """Read the index's size and the indexer's unwatched directories at every scrape."""
        self.index_runs.set_function(lambda: len(index.runs))
        self.index_checkpoints.set_function(lambda: index.checkpoint_count)
        self.unwatched.set_function(lambda: indexer.unwatched)
        self.last_scan.set_function(lambda: index.last_full_scan)

    # ------------------------------------------------------------ IndexerObserver

    def scanned(self, seconds: float) -> None:
        self.scan.observe(seconds)

    def reconciled(self, seconds: float) -> None:
        self.reconcile.observe(seconds)

    def applied(self, lag: float) -> None:
        self.lag.observe(lag)
