"""Keeps the index fresh: a full scan at start, inotify (or polling) after it,
and a periodic reconciliation scan as the safety net.

With inotify (``watches.py``), every directory of both trees down to the job
directories is watched, and below them the directories of runs that may
still change (not of ended ones), in both trees: the watches grow with the
live runs, not with the history. After the cold scan the live runs'
checkpoint directories are watched, then read again (they were scanned
while the index was still being filled, so which runs were live was not
known yet).
An event marks a path dirty; a worker reads dirty paths in a thread, in
batches of at most ``BATCH`` paths, and applies what it read to the index on
the event loop, giving the loop a turn every few milliseconds: a rewritten
status.json shows in ListJobs a few milliseconds later, and a tree growing by
thousands of runs a second makes no call wait for the backlog. If the kernel
runs out of watches or drops events, the reconciliation scan repairs
whatever was missed; so it does for an ended run rewritten in place by
another program, whose directory is not watched. Nothing here writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import itertools
import os
import stat
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from baton.common import runsummary
from baton.common.layout import RUN_MARKER
from baton.common.names import is_valid_name
from baton.viewer_api import scan, snapshot
from baton.viewer_api.index import Index
from baton.viewer_api.parallel_scan import scan_status_parallel
from baton.viewer_api.watches import Changed, Tree, Watches

log = structlog.get_logger(__name__)
T = TypeVar("T")
# Changed paths read and applied at a time: a backlog is worked off in
# steps, so the index moves on visibly and no read holds up the next events.
BATCH = 1000
# The longest the index is changed on the loop before calls get a turn.
TURN_SECONDS = 0.005
# Job directories of the checkpoint tree read at once by a scan: on a disk
# whose cache does not hold the tree, reads waiting together finish sooner.
SCAN_THREADS = 4
# Job directories of the status tree a reconciliation scan reads at once: at a
# million runs on a disk whose cache does not hold the tree, it waits on a
# million reads (each run's directory and its status.json's inode); 16 in
# flight keep the disk busy (issue 18).
STATUS_SCAN_THREADS = 16
# Worker processes for a large cold scan, at least: each waits on its own
# reads when the disk's cache does not hold the tree (one per core otherwise).
MIN_SCAN_WORKERS = 4


@dataclass
class _Dirty:
    status_runs: set[tuple[str, ...]] = field(default_factory=set)
    status_subtrees: set[tuple[str, ...]] = field(default_factory=set)
    # Entries of job checkpoint directories (plain checkpoints or runs' directories).
    ckpt_items: set[tuple[str, ...]] = field(default_factory=set)
    # Entries one level down: a run's checkpoints, or files of a plain checkpoint.
    ckpt_entries: set[tuple[str, ...]] = field(default_factory=set)
    ckpt_subtrees: set[tuple[str, ...]] = field(default_factory=set)


@dataclass
class _Read:
    runs: list[tuple[scan.RunKey, scan.RunFile | str | None]] = field(default_factory=list)
    status_subtrees: list[tuple[tuple[str, ...], scan.ScanResult]] = field(default_factory=list)
    # ((job, run id, suffix), what is there now) for checkpoints in runs' directories.
    checkpoints: list[tuple[tuple[scan.JobKey, str, str], scan.CheckpointFile | str | None]] = field(
        default_factory=list
    )
    checkpoint_items: list[tuple[tuple[str, ...], scan.ScanResult]] = field(default_factory=list)
    checkpoint_subtrees: list[tuple[tuple[str, ...], scan.ScanResult]] = field(default_factory=list)


def _ckpt_rel(cf: scan.CheckpointFile) -> tuple[str, ...]:
    """A checkpoint's names below the checkpoints root."""
    return (*cf.key, cf.run_id, cf.suffix) if cf.run_id else (*cf.key, cf.suffix)


def _marked(path: str) -> bool:
    """Whether the directory at ``path`` holds the run marker (as a scan of it would find it)."""
    try:
        return not stat.S_ISDIR(os.lstat(os.path.join(path, RUN_MARKER)).st_mode)
    except OSError:
        return False


def _return_free_memory() -> None:
    """Hand the scan's freed buffers back to the OS (glibc keeps them otherwise)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _never(rel: tuple[str, ...]) -> bool:
    return False


def _valid(rel: tuple[str, ...]) -> bool:
    return all(is_valid_name(part) for part in rel)


def _covered(rel: tuple[str, ...], prefixes: set[tuple[str, ...]]) -> bool:
    return any(rel[: len(p)] == p for p in prefixes)


def _outermost(prefixes: set[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Prefixes under valid names and not inside another one: rescanning those covers the rest.

    The last name may break the rule: ``_admissible`` then records the problem.
    """
    return [
        rel
        for rel in sorted(prefixes, key=len)
        if _valid(rel[:-1]) and not any(rel[: len(p)] == p for p in prefixes if len(p) < len(rel))
    ]


def _admissible(root: str, path: str, result: scan.ScanResult) -> bool:
    """Whether a changed directory may be scanned; if not, why goes in ``result``."""
    name = os.path.basename(path)
    if name.startswith(".") or name.endswith(".tmp") or not os.path.isdir(path):
        return False  # being written, or gone, or not a directory
    if not is_valid_name(name):
        result.problems[path] = scan.INVALID_NAME
        return False
    if os.path.islink(path) and not scan.inside(root, path):
        result.problems[path] = scan.OUTSIDE_LINK
        return False
    return True


class _Turns:
    """Gives the event loop a turn once ``TURN_SECONDS`` of work have passed since the last."""

    def __init__(self) -> None:
        self._since = time.perf_counter()

    async def take(self) -> None:
        if time.perf_counter() - self._since >= TURN_SECONDS:
            await asyncio.sleep(0)
            self._since = time.perf_counter()


async def _paced(items: Iterable[T], turns: _Turns | None = None) -> AsyncIterator[T]:
    """``items``, giving the event loop a turn every few milliseconds."""
    turns = turns or _Turns()
    for item in items:
        await turns.take()
        yield item


def _forget_problems_under(problems: dict[str, str], path: str) -> None:
    for known in [p for p in problems if p == path or p.startswith(path + os.sep)]:
        del problems[known]


class IndexerObserver:
    """What the indexer tells of its work, for metrics (``viewer_api.metrics``); this one does nothing."""

    def scanned(self, seconds: float) -> None:
        """A scan of both trees (a reconciliation's, or the cold start's) took ``seconds``."""

    def reconciled(self, seconds: float) -> None:
        """A whole reconciliation (scan, then the index made to match) took ``seconds``."""

    def applied(self, lag: float) -> None:
        """Changes inotify reported were in the index ``lag`` seconds after the first was noticed."""


# The periodic safety-net rescan (inotify mode) takes at most this share of the viewer's time:
# on a tree so large, or a disk so slow, that one takes longer than a tenth of the interval,
# the pause after it grows.
RESCAN_SHARE = 0.1


def rescan_pause(interval: float, last_scan_s: float) -> float:
    """Seconds to wait before the next periodic rescan: ``interval``, or longer, so that rescans
    that took ``last_scan_s`` each fill no more than RESCAN_SHARE of the time."""
    return max(interval, last_scan_s * (1 - RESCAN_SHARE) / RESCAN_SHARE)


class Indexer:
    def __init__(
        self,
        index: Index,
        status_dir: str,
        checkpoints_dir: str,
        *,
        mode: str = "inotify",
        poll_interval: float = 2.0,
        reconcile_interval: float = 300.0,
        scan_workers: int = 0,
        observer: IndexerObserver | None = None,
        index_cache: Path | None = None,
    ) -> None:
        if mode not in ("inotify", "poll"):
            raise ValueError("watch mode must be 'inotify' or 'poll'")
        self.index = index
        self.mode = mode
        self._trees = {
            # Job directories (3); the runs' directories below them while their runs are live.
            "status": Tree("status", os.path.realpath(status_dir), 3),
            # Job directories (3), and below them the runs' checkpoint directories (4).
            "checkpoints": Tree("checkpoints", os.path.realpath(checkpoints_dir), 4),
        }
        self._poll_interval = poll_interval
        self._reconcile_interval = reconcile_interval
        # Processes for the cold scan; 0 means one per core, and at least MIN_SCAN_WORKERS.
        self._scan_workers = scan_workers or max(os.cpu_count() or 1, MIN_SCAN_WORKERS)
        self._watches: Watches | None = None
        self._dirty: set[Changed] = set()
        # When the oldest change not yet in the index was noticed (monotonic; None: none waits).
        self._dirty_since: float | None = None
        self._observer = observer or IndexerObserver()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._reconcile_lock = asyncio.Lock()
        # Events were lost and a reconciliation scan is wanted that has not begun yet.
        self._lost = False
        # When the reconciliation scan under way began (None: none is).
        self._reconcile_began: float | None = None
        # While one is under way: when inotify last changed each path (tree
        # kind, names), since the scan that began earlier must not undo it.
        self._touched: dict[tuple[str, tuple[str, ...]], float] = {}
        self._last_touch = -1.0
        # Batches of changes applied since start, and the paths in them (for tests and the log).
        self.batches = 0
        self.changes_applied = 0
        # How long the last reconciliation scan took, end to end (seconds).
        self.last_reconcile_s = 0.0
        # How long the cold start's scan and load took (seconds), for the log.
        self.cold_phases: dict[str, float] = {}
        # The index snapshot's file (``snapshot.py``; None: none kept), and the
        # index's change count when it was last written (-1: never).
        self._cache = index_cache
        self._saved_changes = -1
        self._save_lock = asyncio.Lock()
        # Whether the index was loaded from a snapshot and not yet reconciled with the trees.
        self.from_snapshot = False
        # Ended runs a cold start took from their job directories' summaries
        # (``common.runsummary``), unread; 0 once reconciled with their files.
        self.from_summaries = 0
        # Ended runs' checkpoint directories it took from their summaries, unlisted; 0 likewise.
        self.checkpoints_from_summaries = 0

    # ---------------------------------------------------------------- start

    async def start(self) -> None:
        t0 = time.perf_counter()
        if self.mode == "inotify":
            self._watches = Watches(
                self._trees.values(),
                on_changed=self._changed,
                on_lost=self._events_lost,
                on_roots=lambda: self._spawn(self._roots_changed()),
            )
            self._watches.start()
        # The cold load makes a few hundred thousand objects that all live on:
        # the collector would traverse them again and again for nothing (it
        # doubled the load time). Frozen afterwards, they are never traversed.
        gc.disable()
        try:
            if not await self._restore():
                await self.reconcile(full=True)
        finally:
            gc.freeze()
            gc.enable()
        log.info(
            "index_ready",
            runs=len(self.index.runs),
            checkpoints=self.index.checkpoint_count,
            seconds=round(time.perf_counter() - t0, 3),
            mode=self.mode,
            watched=self.watched,
            unwatched=self.unwatched,
            from_snapshot=self.from_snapshot,
            from_summaries=self.from_summaries,
            checkpoints_from_summaries=self.checkpoints_from_summaries,
            **self.cold_phases,
        )
        if self.unwatched:
            log.warning(
                "inotify_watches_exhausted",
                unwatched=self.unwatched,
                why="changes in these directories show only at reconciliation scans",
                fix="raise the sysctl fs.inotify.max_user_watches (a watch per job directory and live run)",
            )
        self._tasks.append(asyncio.create_task(self._apply_dirty()))
        if self._watches is not None:
            self._tasks.append(asyncio.create_task(self._roots_changed()))
        interval = self._poll_interval if self.mode == "poll" else self._reconcile_interval
        if self.from_snapshot or self.from_summaries or self.checkpoints_from_summaries:
            # Served from the snapshot or the summaries at once; made to match the trees now,
            # in the background.
            self._spawn(self._reconcile_snapshot(t0))
        elif self._cache is not None:
            self._spawn(self._save())
        self._tasks.append(asyncio.create_task(self._periodic(interval)))

    # ------------------------------------------------------------- snapshot

    async def _restore(self) -> bool:
        """Fill the empty index from the snapshot, if there is one for these trees; whether it was."""
        if self._cache is None:
            return False
        t0 = time.monotonic()
        st, ck = self._trees["status"], self._trees["checkpoints"]

        def restore() -> None:  # in a thread: nothing reads the index before it is served
            snap = snapshot.load(self._cache, st.root, ck.root)  # type: ignore[arg-type]
            loader = self.index.loader()
            loader.restore(snap.runs)
            loader.finish(snap.checkpoints, snap.problems)

        try:
            await asyncio.to_thread(restore)
        except snapshot.SnapshotUnusable as exc:
            # Found unusable before the index is touched: it is still empty for the cold scan.
            log.info("index_snapshot_unused", path=str(self._cache), why=str(exc))
            return False
        _return_free_memory()
        self.from_snapshot = True
        self._saved_changes = self.index.changes
        self.cold_phases = {"snapshot_load_s": round(time.monotonic() - t0, 3)}
        return True

    async def _reconcile_snapshot(self, t0: float) -> None:
        """The first reconciliation after a start from the snapshot or the summaries: until it
        ends, a list may show runs as they were when the snapshot or a summary line was written."""
        changes = self.index.changes
        await self.reconcile()
        self.from_snapshot = False
        self.from_summaries = self.checkpoints_from_summaries = 0
        log.info(
            "index_reconciled",
            seconds=round(time.perf_counter() - t0, 3),
            changes=self.index.changes - changes,
            runs=len(self.index.runs),
            watched=self.watched,
            unwatched=self.unwatched,
        )

    async def _save(self) -> None:
        """Write the snapshot if the index changed since it was last written (one write at a time)."""
        if self._cache is None:
            return
        async with self._save_lock:
            changes = self.index.changes
            if changes == self._saved_changes:
                return
            t0 = time.monotonic()
            index = self.index
            snap = snapshot.Snapshot(
                list(index.runs.values()), list(index.all_checkpoints()), dict(index.problems)
            )
            st, ck = self._trees["status"], self._trees["checkpoints"]
            try:
                size = await asyncio.to_thread(snapshot.dump, self._cache, st.root, ck.root, snap)
            except OSError as exc:
                log.warning("index_snapshot_not_written", path=str(self._cache), error=str(exc))
                return
            self._saved_changes = changes
            log.info(
                "index_snapshot_written",
                path=str(self._cache),
                runs=len(snap.runs),
                bytes=size,
                seconds=round(time.monotonic() - t0, 3),
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._watches is not None:
            self._watches.close()
            self._watches = None

    async def _periodic(self, interval: float) -> None:
        while True:
            # Polling, the scan is how changes are seen: it runs as often as asked.
            last = self.last_reconcile_s if self.mode == "inotify" else 0.0
            pause = rescan_pause(interval, last)
            if pause > interval:
                log.info("rescan_spaced", seconds=round(pause, 1), last_rescan_s=round(last, 1))
            await asyncio.sleep(pause)
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile_failed")

    # ------------------------------------------------------------ reconcile

    def _events_lost(self) -> None:
        """The kernel dropped events: one reconciliation scan, however many times it says so."""
        if not self._lost:
            self._lost = True
            self._spawn(self.reconcile(if_lost=True))

    async def reconcile(self, *, full: bool = False, if_lost: bool = False) -> None:
        """Scan both trees and make the index match them exactly.

        ``if_lost``: only if no scan has begun since events were lost.
        """
        async with self._reconcile_lock:
            if if_lost and not self._lost:
                return
            self._lost = False
            try:
                await self._reconcile(full)
            finally:
                self._reconcile_began = None
                self._touched = {}

    async def _reconcile(self, full: bool) -> None:
        st = self._trees["status"]
        ck = self._trees["checkpoints"]
        began = self._reconcile_began = time.monotonic()
        cold = full and not self.index.runs
        known = {} if full else self.index.signatures()
        # Every directory is watched before it is listed, and a live
        # run's as soon as it is read (then read again), so whatever
        # changes while the scan runs raises an event. The runs' checkpoint
        # directories: those of runs live now; on a cold start none (which
        # runs are live is known only once the index is filled: see below).
        on_st, on_run = self._on_dir(st), self._on_run()
        on_ck = self._on_dir(ck, _never if cold else self.index.is_live)
        if cold:
            watch = None if self._watches is None else self._watches.for_workers()
            workers = self._scan_workers
            # The index takes the runs as the workers send them (nothing reads it yet).
            loader = self.index.loader()
            scanning = asyncio.to_thread(
                scan_status_parallel, st.root, workers, on_st, watch, on_run, loader.add, True
            )
        else:
            scanning = asyncio.to_thread(scan.scan_status, st.root, known, on_st, on_run, STATUS_SCAN_THREADS)
        status, ckpts = await asyncio.gather(
            scanning, asyncio.to_thread(scan.scan_checkpoints, ck.root, on_ck, SCAN_THREADS, summaries=cold)
        )
        if self._watches is not None:
            self._watches.take_over(st.kind, status.watched, status.unwatched)
        scanned = time.monotonic()
        if cold:
            summarized, ck_summarized = status.summarized, ckpts.summarized
            loader.finish(ckpts.checkpoints, {**status.problems, **ckpts.problems})
            del status, ckpts, loader
            _return_free_memory()
            loaded = time.monotonic()
            self.cold_phases = {"scan_s": round(scanned - began, 3), "load_s": round(loaded - scanned, 3)}
            self.from_summaries = summarized
            self.checkpoints_from_summaries = ck_summarized
            if self._watches is not None:
                # The live runs' checkpoint directories, read again as if changed:
                # that read watches each before listing it, so nothing made in one
                # since the scan read it is missed. Before serving, so the
                # watches are in place when the first call comes.
                await self._apply({("checkpoints", key) for key in self.index.live_keys()})
        else:
            await self._merge_scan(status, ckpts, began)
            if self._watches is not None:
                # Entries made since the start were watched whatever they were:
                # those whose run is not live (ended, or no run) need it no more.
                self._watches.prune_leaves(ck.kind, self.index.is_live, began)
        self.index.last_full_scan = time.time()
        if self._watches is not None:
            self._watches.forget_unwatched_before(began)
        self._observer.scanned(scanned - began)
        self.last_reconcile_s = time.monotonic() - began
        self._observer.reconciled(self.last_reconcile_s)
        if self._cache is not None and not cold and self.index.changes != self._saved_changes:
            self._spawn(self._save())

    async def _merge_scan(self, status: scan.ScanResult, ckpts: scan.ScanResult, began: float) -> None:
        """Make the index match a scan that began at ``began``, keeping what inotify changed since.

        At 100,000 runs this is a tenth of a second of work: it yields to the
        loop now and then, so calls are not held up, and inotify may change
        the index in between; hence ``touched`` is asked afresh each time.
        """
        index = self.index

        def touched(kind: str, rel: tuple[str, ...]) -> bool:
            # Usually nothing changed since the scan began: then one comparison answers.
            return self._last_touch >= began and self._touched_since(kind, rel, began)

        def path_touched(path: str) -> bool:
            return self._last_touch >= began and self._path_touched_since(path, began)

        def missing(indexed: list[scan.RunKey]) -> list[scan.RunKey]:
            seen = set(status.unchanged)
            seen.update(rf.key for rf in status.runs)
            return [key for key in indexed if key not in seen]

        # The set work in a thread; the index is changed only here, on the loop.
        gone = await asyncio.to_thread(missing, list(index.runs))
        turns = _Turns()
        async for rf in _paced(status.runs, turns):
            if not touched("status", rf.key):
                index.upsert_run(rf)
        async for key in _paced(gone, turns):
            if not touched("status", key):
                index.remove_run(key)
        want = await asyncio.to_thread(lambda: {(c.key, c.run_id, c.suffix): c for c in ckpts.checkpoints})
        async for cf in _paced(list(index.all_checkpoints()), turns):
            if (cf.key, cf.run_id, cf.suffix) not in want and not touched("checkpoints", _ckpt_rel(cf)):
                index.remove_checkpoint(cf.key, cf.run_id, cf.suffix)
        async for (job_key, run_id, suffix), cf in _paced(list(want.items()), turns):
            if touched("checkpoints", _ckpt_rel(cf)):
                continue
            old = index.checkpoints.get(job_key, {}).get(run_id, {}).get(suffix)
            if old != cf:
                index.upsert_checkpoint(cf)
        # Problems too: what inotify saw since the scan began stays as it saw it.
        found = {**status.problems, **ckpts.problems}
        index.problems = {
            **{p: why for p, why in found.items() if not path_touched(p)},
            **{p: why for p, why in index.problems.items() if path_touched(p)},
        }

    # ------------------------------------------------------------- inotify

    def _on_dir(self, tree: Tree, leaf: Callable[[tuple[str, ...]], bool] | None = None) -> scan.OnDir | None:
        """The ``on_dir`` hook of a scan of ``tree``: watch each directory (None when polling);
        of its deepest ones (a job's checkpoint entries), those ``leaf`` wants."""
        return None if self._watches is None else self._watches.on_dir(tree.kind, leaf)

    def _on_run(self) -> scan.OnRun | None:
        """The ``on_run`` hook of a status scan: watch live runs' directories, and their
        checkpoint directories (None when polling)."""
        if self._watches is None:
            return None
        return self._watches.on_run("status", self.index.is_live, checkpoints="checkpoints")

    def _not_ended(self, rel: tuple[str, ...]) -> bool:
        """Whether a job's checkpoint entry just seen is watched: unless its run is known to
        have ended (it may be a run not indexed yet, or a directory whose marker comes later)."""
        return not self.index.is_ended(rel)

    def _changed(self, paths: set[Changed]) -> None:
        # A line appended to a job directory's run summary (one per ended run, in each tree)
        # changes nothing the index holds: it is read only at a cold start.
        paths = {p for p in paths if len(p[1]) != 4 or p[1][3] != runsummary.SUMMARY_FILE}
        if not paths:
            return
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
        self._dirty |= paths
        self._wake.set()

    def reread(self, keys: Iterable[scan.RunKey]) -> None:
        """Read these runs' status.json again soon, as if inotify had said they changed
        (a reader found one newer than the index)."""
        self._changed({("status", (*key, scan.STATUS_FILE)) for key in keys})

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _roots_changed(self) -> None:
        """When a tree root was awaited and exists now (or was replaced), scan it in."""
        if self._watches is not None and await asyncio.to_thread(self._watches.await_roots):
            await self.reconcile()

    async def _apply_dirty(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            noticed, self._dirty_since = self._dirty_since, None
            while self._dirty:
                if len(self._dirty) <= BATCH:
                    batch, self._dirty = self._dirty, set()
                else:
                    batch = set(itertools.islice(self._dirty, BATCH))
                    self._dirty -= batch
                try:
                    await self._apply(batch)
                except Exception:
                    log.exception("index_update_failed")
                self.batches += 1
                self.changes_applied += len(batch)
            if noticed is not None:
                self._observer.applied(time.monotonic() - noticed)

    def _path_touched_since(self, path: str, since: float) -> bool:
        for tree in self._trees.values():
            rel = tree.names_of(path)
            if rel is not None:
                if tree.kind == "status" and len(rel) > 4:
                    rel = rel[:4]
                return self._touched_since(tree.kind, rel, since)
        return False

    def _touched_since(self, kind: str, rel: tuple[str, ...], since: float) -> bool:
        return any(self._touched.get((kind, rel[:i]), -1.0) >= since for i in range(1, len(rel) + 1))

    async def _apply(self, batch: set[tuple[str, tuple[str, ...]]]) -> None:
        now = time.monotonic()
        # Only a reconciliation under way needs to know (it began before ``now``).
        reconciling = self._reconcile_began is not None
        if reconciling:
            for kind, rel in batch:
                self._touched[(kind, rel if kind == "checkpoints" or len(rel) < 5 else rel[:4])] = now
            self._last_touch = now
        dirty = _Dirty()
        for kind, rel in batch:
            if kind == "status":
                if len(rel) == 5:
                    if rel[4] == scan.STATUS_FILE:
                        dirty.status_runs.add(rel[:4])
                elif len(rel) <= 4:
                    dirty.status_subtrees.add(rel)
            elif len(rel) == 5:
                if rel[4] == RUN_MARKER:
                    # The marker came or went: the whole entry changes meaning.
                    dirty.ckpt_items.add(rel[:4])
                else:
                    dirty.ckpt_entries.add(rel)
            elif len(rel) == 4:
                dirty.ckpt_items.add(rel)
            elif len(rel) < 4:
                dirty.ckpt_subtrees.add(rel)
        st, ck = self._trees["status"], self._trees["checkpoints"]
        read = await asyncio.to_thread(self._read_changes, st, ck, dirty)
        index = self.index
        turns = _Turns()
        for rel, outcome in read.runs:
            await turns.take()
            path = os.path.join(st.root, *rel, scan.STATUS_FILE)
            if isinstance(outcome, scan.RunFile):
                index.upsert_run(outcome)
                index.problems.pop(path, None)
            elif outcome == "missing":
                index.remove_run(rel)
                index.problems.pop(path, None)
            elif outcome is not None:
                # Unreadable for now: keep what the index had; the next write or scan decides.
                index.problems[path] = outcome
        for prefix, sub in read.status_subtrees:
            # Only what is gone is removed: a run read again stays listed throughout.
            found = {rf.key for rf in sub.runs}
            async for key in _paced(index.keys_under(prefix), turns):
                if key not in found:
                    index.remove_run(key)
            _forget_problems_under(index.problems, os.path.join(st.root, *prefix))
            async for rf in _paced(sub.runs, turns):
                index.upsert_run(rf)
            index.problems.update(sub.problems)
        for (job_key, run_id, suffix), got in read.checkpoints:
            index.remove_checkpoint(job_key, run_id, suffix)
            path = os.path.join(ck.root, *job_key, run_id, suffix)
            index.problems.pop(path, None)
            if isinstance(got, scan.CheckpointFile):
                index.upsert_checkpoint(got)
            elif isinstance(got, str):
                index.problems[path] = got
        for rel, sub in read.checkpoint_items:
            # Read whole, so a reconciliation that began before must not undo any of it.
            if reconciling:
                self._touched[("checkpoints", rel)] = now
            index.remove_checkpoint_item((rel[0], rel[1], rel[2]), rel[3])
            _forget_problems_under(index.problems, os.path.join(ck.root, *rel))
            for cf in sub.checkpoints:
                index.upsert_checkpoint(cf)
            index.problems.update(sub.problems)
        for prefix, sub in read.checkpoint_subtrees:
            index.remove_checkpoints_under(prefix)
            _forget_problems_under(index.problems, os.path.join(ck.root, *prefix))
            for cf in sub.checkpoints:
                index.upsert_checkpoint(cf)
            index.problems.update(sub.problems)

    def _watching_result(self, tree: Tree) -> scan.ScanResult:
        """A ScanResult that watches each directory before it is listed (and live runs')."""
        if tree.kind == "status":
            return scan.ScanResult(on_dir=self._on_dir(tree), on_run=self._on_run())
        return scan.ScanResult(on_dir=self._on_dir(tree, self._not_ended))

    def _read_changes(self, st: Tree, ck: Tree, dirty: _Dirty) -> _Read:
        """Read what the dirty paths now hold (blocking: runs in a thread)."""
        out = _Read()
        # A changed directory at any level: rescan below it (it may be new, moved or gone).
        for rel in _outermost(dirty.status_subtrees):
            result = self._watching_result(st)
            path = os.path.join(st.root, *rel)
            if _admissible(st.root, path, result):
                scan.scan_status_under(st.root, rel, path, result, {})
            out.status_subtrees.append((rel, result))
        on_run = self._on_run()
        for rel in dirty.status_runs:
            if _covered(rel, dirty.status_subtrees) or not _valid(rel):
                continue
            key: scan.RunKey = (rel[0], rel[1], rel[2], rel[3])
            run_dir = os.path.join(st.root, *rel)
            out.runs.append((key, scan.read_run_watched(st.root, key, run_dir, None, on_run)))
        for rel in _outermost(dirty.ckpt_subtrees):
            result = self._watching_result(ck)
            result.watch_items = True
            path = os.path.join(ck.root, *rel)
            if _admissible(ck.root, path, result):
                scan.scan_checkpoints_under(ck.root, rel, path, result)
            out.checkpoint_subtrees.append((rel, result))
        items = set(dirty.ckpt_items)
        entries: list[tuple[str, ...]] = []
        for rel in dirty.ckpt_entries:
            if _covered(rel, dirty.ckpt_subtrees) or not _valid(rel[:4]):
                continue
            # In a run's directory, one checkpoint changed; in a plain checkpoint, the checkpoint did.
            if _marked(os.path.join(ck.root, *rel[:4])):
                entries.append(rel)
            else:
                items.add(rel[:4])
        for rel in items:
            if _covered(rel, dirty.ckpt_subtrees) or not _valid(rel[:3]):
                continue
            result = self._watching_result(ck)
            result.watch_items = True
            item: tuple[str, str, str, str] = (rel[0], rel[1], rel[2], rel[3])
            scan.read_checkpoint_item(ck.root, item, os.path.join(ck.root, *rel), result)
            out.checkpoint_items.append((rel, result))
        for rel in entries:
            if rel[:4] in items:
                continue
            job_key: scan.JobKey = (rel[0], rel[1], rel[2])
            got = scan.read_checkpoint(ck.root, job_key, rel[3], rel[4], os.path.join(ck.root, *rel))
            out.checkpoints.append(((job_key, rel[3], rel[4]), got))
        return out

    @property
    def unwatched(self) -> int:
        """How many directories inotify could not watch when last tried."""
        return 0 if self._watches is None else self._watches.unwatched

    @property
    def watched(self) -> int:
        """How many directories inotify watches now."""
        return 0 if self._watches is None else self._watches.watched

    @property
    def backlog(self) -> int:
        """Changed paths not read yet."""
        return len(self._dirty)
