"""Keeps the index fresh: a full scan at start, inotify (or polling) after it,
and a periodic reconciliation scan as the safety net.

With inotify, every directory of both trees down to the run directories (and
to the job directories of the checkpoint tree) is watched. An event marks a
path dirty; a worker reads dirty paths in a thread and applies what it read to
the index on the event loop, so a rewritten status.json shows in ListJobs a
few milliseconds later. If the kernel runs out of watches or drops events,
the reconciliation scan repairs whatever was missed. Nothing here writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from inotify_simple import Event, INotify
from inotify_simple import flags as F

from common.names import is_valid_name
from viewer_api import scan
from viewer_api.index import Index

log = structlog.get_logger(__name__)
T = TypeVar("T")

# No MODIFY: a log being written would flood us, and whole status files arrive
# by rename (MOVED_TO) or, from writers that do not rename, CLOSE_WRITE.
# MOVE_SELF: a watch follows its directory when it is moved, so its name is forgotten then.
_DIR_MASK = F.CREATE | F.DELETE | F.MOVED_TO | F.MOVED_FROM | F.CLOSE_WRITE | F.MOVE_SELF | F.ONLYDIR
# Above a tree root that does not exist yet: only its making matters. Added
# to (not replacing) what a watch on the same folder may already ask for.
_ANCESTOR_MASK = F.CREATE | F.MOVED_TO | F.ONLYDIR | F.MASK_ADD


@dataclass
class _Tree:
    kind: str  # "status" or "checkpoints"
    root: str
    # Depth of the deepest watched directory: run dirs (4) / job dirs (3).
    depth: int
    wds: dict[int, tuple[str, ...]] = field(default_factory=dict)
    # The same, the other way: which directories are watched.
    rels: dict[tuple[str, ...], int] = field(default_factory=dict)

    def add(self, wd: int, rel: tuple[str, ...]) -> None:
        # One directory watched again under a new name (it was moved) keeps its descriptor.
        self.drop(wd)
        self.wds[wd] = rel
        self.rels[rel] = wd

    def drop(self, wd: int) -> None:
        rel = self.wds.pop(wd, None)
        if rel is not None and self.rels.get(rel) == wd:
            del self.rels[rel]


@dataclass
class _Dirty:
    status_runs: set[tuple[str, ...]] = field(default_factory=set)
    status_subtrees: set[tuple[str, ...]] = field(default_factory=set)
    ckpt_items: set[tuple[str, ...]] = field(default_factory=set)
    ckpt_subtrees: set[tuple[str, ...]] = field(default_factory=set)


@dataclass
class _Read:
    runs: list[tuple[scan.RunKey, scan.RunFile | str | None]] = field(default_factory=list)
    status_subtrees: list[tuple[tuple[str, ...], scan.ScanResult]] = field(default_factory=list)
    checkpoints: list[tuple[tuple[scan.JobKey, str], scan.CheckpointFile | str | None]] = field(
        default_factory=list
    )
    checkpoint_subtrees: list[tuple[tuple[str, ...], scan.ScanResult]] = field(default_factory=list)


def _return_free_memory() -> None:
    """Hand the scan's freed buffers back to the OS (glibc keeps them otherwise)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


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


async def _paced(items: list[T], every: int = 2000) -> AsyncIterator[T]:
    """``items``, giving the event loop a turn after every ``every`` of them."""
    for i, item in enumerate(items):
        if i and i % every == 0:
            await asyncio.sleep(0)
        yield item


def _forget_problems_under(problems: dict[str, str], path: str) -> None:
    for known in [p for p in problems if p == path or p.startswith(path + os.sep)]:
        del problems[known]


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
    ) -> None:
        if mode not in ("inotify", "poll"):
            raise ValueError("watch mode must be 'inotify' or 'poll'")
        self.index = index
        self.mode = mode
        self._trees = {
            "status": _Tree("status", os.path.realpath(status_dir), 4),
            "checkpoints": _Tree("checkpoints", os.path.realpath(checkpoints_dir), 3),
        }
        self._poll_interval = poll_interval
        self._reconcile_interval = reconcile_interval
        # Processes for the cold scan; 0 means one per core.
        self._scan_workers = scan_workers or os.cpu_count() or 1
        self._inotify: INotify | None = None
        self._dirty: set[tuple[str, tuple[str, ...]]] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._reconcile_lock = asyncio.Lock()
        self._wd_lock = threading.Lock()
        # When inotify last changed each path (tree kind, names): a reconcile
        # scan that began earlier must not undo it.
        self._touched: dict[tuple[str, tuple[str, ...]], float] = {}
        self._last_touch = -1.0
        # Directories inotify could not watch (out of watches), and when that
        # was last found: changes there show only at reconciliation scans.
        self._unwatched: dict[tuple[str, tuple[str, ...]], float] = {}
        # How long the cold start's scan and load took (seconds), for the log.
        self.cold_phases: dict[str, float] = {}
        # Tree kind -> the watch on the nearest existing folder above its
        # missing root: the tree shows up as soon as the root is made.
        self._ancestors: dict[str, int] = {}
        # Events read while the cold scan's workers add watches, handled once
        # their descriptors are known (None: not holding back).
        self._held: list[Event] | None = None

    # ---------------------------------------------------------------- start

    async def start(self) -> None:
        t0 = time.perf_counter()
        if self.mode == "inotify":
            self._inotify = INotify(nonblocking=True)
            self._held = []
            asyncio.get_running_loop().add_reader(self._inotify.fileno(), self._on_events)
        # The cold load makes a few hundred thousand objects that all live on:
        # the collector would traverse them again and again for nothing (it
        # doubled the load time). Frozen afterwards, they are never traversed.
        gc.disable()
        try:
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
            unwatched=self.unwatched,
            **self.cold_phases,
        )
        if self.unwatched:
            log.warning(
                "inotify_watches_exhausted",
                unwatched=self.unwatched,
                why="changes in these directories show only at reconciliation scans",
                fix="raise the sysctl fs.inotify.max_user_watches (one watch per run directory)",
            )
        self._tasks.append(asyncio.create_task(self._apply_dirty()))
        if self._inotify is not None:
            self._tasks.append(asyncio.create_task(self._roots_changed()))
        interval = self._poll_interval if self.mode == "poll" else self._reconcile_interval
        self._tasks.append(asyncio.create_task(self._periodic(interval)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._inotify is not None:
            asyncio.get_running_loop().remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None

    async def _periodic(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile_failed")

    # ------------------------------------------------------------ reconcile

    async def reconcile(self, *, full: bool = False) -> None:
        """Scan both trees and make the index match them exactly."""
        async with self._reconcile_lock:
            st = self._trees["status"]
            ck = self._trees["checkpoints"]
            began = time.monotonic()
            cold = full and not self.index.runs
            known = {} if full else self.index.signatures()
            # Every directory is watched before it is listed, so whatever
            # changes while the scan runs raises an event.
            on_st, on_ck = self._watcher_for(st), self._watcher_for(ck)
            if cold:
                watch = None if self._inotify is None else scan.WorkerWatch(self._inotify.fileno(), _DIR_MASK)
                workers = self._scan_workers
                scanning = asyncio.to_thread(scan.scan_status_parallel, st.root, workers, on_st, watch)
            else:
                scanning = asyncio.to_thread(scan.scan_status, st.root, known, on_st)
            status, ckpts = await asyncio.gather(
                scanning, asyncio.to_thread(scan.scan_checkpoints, ck.root, on_ck)
            )
            self._register(st, status.watched, status.unwatched)
            scanned = time.monotonic()
            if cold:
                self.index.load(status.runs, ckpts.checkpoints, {**status.problems, **ckpts.problems})
                del status, ckpts
                _return_free_memory()
                loaded = time.monotonic()
                self.cold_phases = {"scan_s": round(scanned - began, 3), "load_s": round(loaded - scanned, 3)}
            else:
                await self._merge_scan(status, ckpts, began)
            self.index.last_full_scan = time.time()
            with self._wd_lock:
                # This scan tried every directory: older failures are watched now, or gone.
                self._unwatched = {k: t for k, t in self._unwatched.items() if t >= began}

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
        async for rf in _paced(status.runs):
            if not touched("status", rf.key):
                index.upsert_run(rf)
        async for key in _paced(gone):
            if not touched("status", key):
                index.remove_run(key)
        want = await asyncio.to_thread(lambda: {(c.key, c.suffix): c for c in ckpts.checkpoints})
        async for job_key, suffix in _paced([(k, s) for k, by in index.checkpoints.items() for s in by]):
            if (job_key, suffix) not in want and not touched("checkpoints", (*job_key, suffix)):
                index.remove_checkpoint(job_key, suffix)
        async for (job_key, suffix), cf in _paced(list(want.items())):
            if touched("checkpoints", (*job_key, suffix)):
                continue
            old = index.checkpoints.get(job_key, {}).get(suffix)
            if old != cf:
                index.upsert_checkpoint(cf)
        # Problems too: what inotify saw since the scan began stays as it saw it.
        found = {**status.problems, **ckpts.problems}
        index.problems = {
            **{p: why for p, why in found.items() if not path_touched(p)},
            **{p: why for p, why in index.problems.items() if path_touched(p)},
        }
        self._touched = {k: t for k, t in self._touched.items() if t >= began}

    # ------------------------------------------------------------- inotify

    def _rel(self, tree: _Tree, path: str) -> tuple[str, ...] | None:
        if path == tree.root:
            return ()
        if not path.startswith(tree.root + os.sep):
            return None
        return tuple(sys.intern(part) for part in path[len(tree.root) + 1 :].split(os.sep))

    def _watch(self, tree: _Tree, path: str, rel: tuple[str, ...]) -> None:
        """Watch the directory ``path``, named ``rel`` in ``tree`` (blocking: called in a thread).

        ``rel`` is the path as the tree names it: a link inside the root stays its name.
        """
        assert self._inotify is not None
        if len(rel) > tree.depth:
            return
        # Under the lock the event reader takes too: no event for this
        # watch can be read before the watch is known to belong to ``rel``.
        with self._wd_lock:
            if rel in tree.rels:
                # Watched already: a rescan need not ask again. A directory
                # removed and made anew loses its watch (IGNORED) before its
                # parent reports it made, and that report rescans it.
                return
            try:
                wd = self._inotify.add_watch(path, _DIR_MASK)
            except OSError:
                self._unwatched[(tree.kind, rel)] = time.monotonic()
                return
            tree.add(wd, rel)
            self._unwatched.pop((tree.kind, rel), None)

    def _watcher_for(self, tree: _Tree) -> scan.OnDir | None:
        """The ``on_dir`` hook that watches each directory a scan of ``tree`` enters."""
        if self._inotify is None:
            return None
        return lambda path, rel: self._watch(tree, path, rel)

    def _register(
        self, tree: _Tree, watched: list[tuple[int, tuple[str, ...]]], unwatched: list[tuple[str, ...]]
    ) -> None:
        """Take over the watches scan workers added, then hand on the events held back for them."""
        now = time.monotonic()
        with self._wd_lock:
            for wd, rel in watched:
                tree.add(wd, rel)
            self._unwatched.update(((tree.kind, rel), now) for rel in unwatched)
            held, self._held = self._held, None
        if held:
            self._handle_events(held)

    def _tree_of(self, wd: int) -> tuple[_Tree, tuple[str, ...]] | None:
        for tree in self._trees.values():
            rel = tree.wds.get(wd)
            if rel is not None:
                return tree, rel
        return None

    def _on_events(self) -> None:
        assert self._inotify is not None
        with self._wd_lock:
            try:
                events = self._inotify.read(timeout=0)
            except BlockingIOError:
                return
            if self._held is not None:
                # Scan workers are adding watches this process does not know yet.
                self._held.extend(events)
                return
        self._handle_events(events)

    def _handle_events(self, events: list[Event]) -> None:
        with self._wd_lock:
            found_events = [(ev, self._tree_of(ev.wd)) for ev in events]
            ancestors = set(self._ancestors.values())
        roots_changed = False
        for ev, found in found_events:
            if ev.mask & F.Q_OVERFLOW:
                # Events were lost: only a scan can tell what changed.
                self._spawn(self.reconcile())
                continue
            if ev.wd in ancestors:
                roots_changed = True  # something was made where a tree root is awaited
            if found is None:
                continue
            tree, rel = found
            if ev.mask & (F.IGNORED | F.MOVE_SELF):
                # Gone, or moved: what is at its name now (if anything) is
                # rescanned when its parent reports it, and watched then.
                with self._wd_lock:
                    tree.drop(ev.wd)
                roots_changed = roots_changed or rel == ()  # the tree's root itself
                continue
            if not ev.name:
                continue  # the watched directory itself; its parent reports it
            self._dirty.add((tree.kind, (*rel, ev.name)))
        if self._dirty:
            self._wake.set()
        if roots_changed:
            self._spawn(self._roots_changed())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _roots_changed(self) -> None:
        """Watch above missing tree roots; when an awaited root exists, scan it in."""
        if await asyncio.to_thread(self._watch_ancestors):
            await self.reconcile()

    def _watch_ancestors(self) -> bool:
        """Watch the nearest existing folder above each missing tree root (blocking).

        True when a root exists that is not watched yet: one that was
        awaited, or one removed and made again before this ran. The viewer may
        start before the conductor has made its trees, and a tree may be
        removed and made again; without this, neither would show until a
        reconciliation scan.
        """
        assert self._inotify is not None
        appeared = False
        for tree in self._trees.values():
            with self._wd_lock:
                waiting = self._ancestors.get(tree.kind)
                unwatched = () not in tree.rels and (tree.kind, ()) not in self._unwatched
            if os.path.isdir(tree.root):
                if waiting is not None:
                    self._stop_awaiting(tree.kind)
                appeared = appeared or waiting is not None or unwatched
                continue
            ancestor = os.path.dirname(tree.root)
            while not os.path.isdir(ancestor) and ancestor != os.path.dirname(ancestor):
                ancestor = os.path.dirname(ancestor)
            with self._wd_lock:
                try:
                    self._ancestors[tree.kind] = self._inotify.add_watch(ancestor, _ANCESTOR_MASK)
                except OSError:
                    continue  # the periodic reconciliation will find the tree
            if waiting is not None and waiting != self._ancestors[tree.kind]:
                self._rm_watch_unless_used(waiting)
            # Made between the check above and the watch: the event came too early.
            appeared = appeared or os.path.isdir(tree.root)
        return appeared

    def _stop_awaiting(self, kind: str) -> None:
        with self._wd_lock:
            wd = self._ancestors.pop(kind)
        self._rm_watch_unless_used(wd)

    def _rm_watch_unless_used(self, wd: int) -> None:
        assert self._inotify is not None
        with self._wd_lock:
            if wd in self._ancestors.values() or self._tree_of(wd) is not None:
                return
            with contextlib.suppress(OSError):  # already gone with its folder
                self._inotify.rm_watch(wd)

    async def _apply_dirty(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._dirty = self._dirty, set()
            try:
                await self._apply(batch)
            except Exception:
                log.exception("index_update_failed")

    def _path_touched_since(self, path: str, since: float) -> bool:
        for tree in self._trees.values():
            rel = self._rel(tree, path)
            if rel is not None:
                if tree.kind == "status" and len(rel) > 4:
                    rel = rel[:4]
                return self._touched_since(tree.kind, rel, since)
        return False

    def _touched_since(self, kind: str, rel: tuple[str, ...], since: float) -> bool:
        return any(self._touched.get((kind, rel[:i]), -1.0) >= since for i in range(1, len(rel) + 1))

    async def _apply(self, batch: set[tuple[str, tuple[str, ...]]]) -> None:
        now = time.monotonic()
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
            elif len(rel) == 4:
                dirty.ckpt_items.add(rel)
            elif len(rel) < 4:
                dirty.ckpt_subtrees.add(rel)
        st, ck = self._trees["status"], self._trees["checkpoints"]
        read = await asyncio.to_thread(self._read_changes, st, ck, dirty)
        index = self.index
        for rel, outcome in read.runs:
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
            index.remove_runs_under(prefix)
            _forget_problems_under(index.problems, os.path.join(st.root, *prefix))
            for rf in sub.runs:
                index.upsert_run(rf)
            index.problems.update(sub.problems)
        for (job_key, suffix), got in read.checkpoints:
            index.remove_checkpoint(job_key, suffix)
            path = os.path.join(ck.root, *job_key, suffix)
            index.problems.pop(path, None)
            if isinstance(got, scan.CheckpointFile):
                index.upsert_checkpoint(got)
            elif isinstance(got, str):
                index.problems[path] = got
        for prefix, sub in read.checkpoint_subtrees:
            index.remove_checkpoints_under(prefix)
            _forget_problems_under(index.problems, os.path.join(ck.root, *prefix))
            for cf in sub.checkpoints:
                index.upsert_checkpoint(cf)
            index.problems.update(sub.problems)

    def _watching_result(self, tree: _Tree) -> scan.ScanResult:
        """A ScanResult that watches each directory before it is listed."""
        return scan.ScanResult(on_dir=self._watcher_for(tree))

    def _read_changes(self, st: _Tree, ck: _Tree, dirty: _Dirty) -> _Read:
        """Read what the dirty paths now hold (blocking: runs in a thread)."""
        out = _Read()
        # A changed directory at any level: rescan below it (it may be new, moved or gone).
        for rel in _outermost(dirty.status_subtrees):
            result = self._watching_result(st)
            path = os.path.join(st.root, *rel)
            if _admissible(st.root, path, result):
                scan.scan_status_under(st.root, rel, path, result, {})
            out.status_subtrees.append((rel, result))
        for rel in dirty.status_runs:
            if _covered(rel, dirty.status_subtrees) or not _valid(rel):
                continue
            key: scan.RunKey = (rel[0], rel[1], rel[2], rel[3])
            out.runs.append((key, scan.read_run(st.root, key, os.path.join(st.root, *rel))))
        for rel in _outermost(dirty.ckpt_subtrees):
            result = self._watching_result(ck)
            path = os.path.join(ck.root, *rel)
            if _admissible(ck.root, path, result):
                scan.scan_checkpoints_under(ck.root, rel, path, result)
            out.checkpoint_subtrees.append((rel, result))
        for rel in dirty.ckpt_items:
            if _covered(rel, dirty.ckpt_subtrees) or not _valid(rel[:3]):
                continue
            job_key: scan.JobKey = (rel[0], rel[1], rel[2])
            got = scan.read_checkpoint(ck.root, job_key, rel[3], os.path.join(ck.root, *rel))
            out.checkpoints.append(((job_key, rel[3]), got))
        return out

    @property
    def unwatched(self) -> int:
        """How many directories inotify could not watch when last tried."""
        return len(self._unwatched)

    @property
    def watch_count(self) -> int:
        return sum(len(t.wds) for t in self._trees.values())
