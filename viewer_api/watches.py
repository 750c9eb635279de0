"""The index's inotify side: watches on the trees' directories, events turned into changed paths.

Both trees are watched down to their job directories, and each watch is known
by its directory's names below its tree root. Below the job directories,
only what may still change takes a watch, so that the count follows the
live runs and not the history (a million ended runs would take more than
the kernel's per-user few hundred thousand):

- in the status tree, a run's directory, while its run may still change: an
  ended run's status.json changes only if another program rewrites it or
  the run is deleted, which its job directory's watch (a directory removed
  or moved in) or the reconciliation scan sees;
- in the checkpoint tree, a run's checkpoint directory (marked by
  ``.baton-run``) while its run is live, so a checkpoint renamed into it
  shows at once; an ended run makes no more checkpoints, and one put there
  by another program shows at the reconciliation scan. Every entry made in
  a job's checkpoint directory after the viewer started is watched too,
  checkpoint or not, since a directory just made may be a run's whose run
  is not indexed yet, or whose marker comes a moment later; a
  reconciliation scan drops those watches again once their run is not live
  (``prune_leaves``). Which of these the scan and the events watch is the
  caller's ``leaf`` rule (``on_dir``).

An event on a watched directory becomes a changed path,
``(tree kind, names)``, for the indexer to read again. The cold scan's worker
processes add their watches to this same inotify instance (they inherit its
descriptor); events for those watches that arrive before the workers report
them are held, then handled. A tree whose root does not exist yet is awaited
through a watch on the nearest existing folder above it.

Watches are added from scan threads and events are read on the event loop,
under one lock, so no event is read before its watch is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from inotify_simple import Event, INotify
from inotify_simple import flags as F

from baton.viewer_api.parallel_scan import WorkerWatch
from baton.viewer_api.scan import OnDir, OnRun, RunFile, RunKey, ended

# No MODIFY: a log being written would flood us, and whole status files arrive
# by rename (MOVED_TO) or, from writers that do not rename, CLOSE_WRITE.
# MOVE_SELF: a watch follows its directory when it is moved, so its name is forgotten then.
DIR_MASK = F.CREATE | F.DELETE | F.MOVED_TO | F.MOVED_FROM | F.CLOSE_WRITE | F.MOVE_SELF | F.ONLYDIR
# Above a tree root that does not exist yet: only its making matters. Added
# to (not replacing) what a watch on the same folder may already ask for.
_ANCESTOR_MASK = F.CREATE | F.MOVED_TO | F.ONLYDIR | F.MASK_ADD

Names = tuple[str, ...]
# A path that changed: its tree's kind and its names below the tree root.
Changed = tuple[str, Names]


@dataclass(frozen=True)
class Tree:
    kind: str  # "status" or "checkpoints"
    root: str
    # Depth of the deepest directory ``on_dir`` watches: job directories (3) in
    # the status tree, whose runs' directories ``on_run`` sees to; in the
    # checkpoint tree, runs' directories (4), which the scan picks.
    depth: int

    def names_of(self, path: str) -> Names | None:
        """``path``'s names below the root; None when it is not under the root."""
        if path == self.root:
            return ()
        if not path.startswith(self.root + os.sep):
            return None
        return tuple(sys.intern(part) for part in path[len(self.root) + 1 :].split(os.sep))


@dataclass
class _Watched:
    """One tree's watches, both ways, and when each was added."""

    wds: dict[int, Names] = field(default_factory=dict)
    rels: dict[Names, int] = field(default_factory=dict)
    added: dict[Names, float] = field(default_factory=dict)

    def add(self, wd: int, rel: Names) -> None:
        # One directory watched again under a new name (it was moved) keeps its descriptor.
        self.drop(wd)
        self.wds[wd] = rel
        self.rels[rel] = wd
        self.added[rel] = time.monotonic()

    def drop(self, wd: int) -> None:
        rel = self.wds.pop(wd, None)
        if rel is not None and self.rels.get(rel) == wd:
            del self.rels[rel]
            self.added.pop(rel, None)

    def retire(self, rel: Names) -> int | None:
        """Forget ``rel``'s watch by name; its descriptor still names it until the kernel says
        it is gone (IGNORED), so events already queued for it are not lost."""
        self.added.pop(rel, None)
        return self.rels.pop(rel, None)


class Watches:
    """Inotify watches on the trees' directories, and what their events say changed.

    ``on_changed`` gets the paths each batch of events names; ``on_lost`` is
    called when the kernel dropped events (only a scan can tell what changed);
    ``on_roots`` when a tree root may have appeared, moved or gone (then call
    ``await_roots``).
    """

    def __init__(
        self,
        trees: Iterable[Tree],
        *,
        on_changed: Callable[[set[Changed]], None],
        on_lost: Callable[[], None],
        on_roots: Callable[[], None],
    ) -> None:
        self._trees = {tree.kind: tree for tree in trees}
        self._watched = {kind: _Watched() for kind in self._trees}
        self._on_changed = on_changed
        self._on_lost = on_lost
        self._on_roots = on_roots
        self._inotify = INotify(nonblocking=True)
        self._lock = threading.Lock()
        # Directories the kernel would not watch (out of watches), and when
        # that was last found: changes there show only at reconciliation scans.
        self._unwatched: dict[Changed, float] = {}
        # Tree kind -> the watch on the nearest existing folder above its missing root.
        self._ancestors: dict[str, int] = {}
        # Events read while scan workers add watches not known here yet
        # (None: not holding back).
        self._held: list[Event] | None = []

    def start(self) -> None:
        """Start reading events on the running loop."""
        asyncio.get_running_loop().add_reader(self._inotify.fileno(), self._on_events)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self._inotify.fileno())
        self._inotify.close()

    # ------------------------------------------------------------- adding

    def for_workers(self) -> WorkerWatch:
        """What scan workers need to add watches to this instance."""
        return WorkerWatch(self._inotify.fileno(), DIR_MASK)

    def on_dir(self, kind: str, leaf: Callable[[Names], bool] | None = None) -> OnDir:
        """A scan's ``on_dir`` hook for tree ``kind``: watch each directory before it is listed.

        ``leaf`` says whether a directory at the tree's deepest watched level
        is wanted (called in scan threads); one that is not loses any watch it had.
        """
        tree, watched = self._trees[kind], self._watched[kind]

        def watch(path: str, rel: Names) -> bool:  # blocking: scans run in threads
            if len(rel) > tree.depth:
                return False
            if leaf is not None and len(rel) == tree.depth and not leaf(rel):
                # Most are not watched: one dict read each (atomic), no lock.
                if rel in watched.rels or (kind, rel) in self._unwatched:
                    with self._lock:
                        self._unwatch(kind, rel)
                return False
            with self._lock:
                if rel in watched.rels:
                    # Watched already: a rescan need not ask again. A directory
                    # removed and made anew loses its watch (IGNORED) before
                    # its parent reports it made, and that report rescans it.
                    return False
                try:
                    wd = self._inotify.add_watch(path, DIR_MASK)
                except OSError:
                    self._unwatched[(kind, rel)] = time.monotonic()
                    return False
                watched.add(wd, rel)
                self._unwatched.pop((kind, rel), None)
                return True

        return watch

    def on_run(self, kind: str, live: Callable[[RunKey], bool], checkpoints: str | None = None) -> OnRun:
        """A scan's ``on_run`` hook for tree ``kind``: watch the directory of a run that may still
        change, and stop watching one that has ended. ``live`` says whether a run the read found
        unchanged is in a state it may leave.

        With ``checkpoints`` (a tree's kind), the run's checkpoint directory there
        follows suit: unwatched when the run ends, watched (if it is there) when
        the run is found live and was not watched, as when another program
        rewrote an ended run to a live state.
        """
        watched = self._watched[kind]

        def settle(path: str, key: RunKey, got: RunFile | str | None) -> bool:  # blocking: in scan threads
            # Missing or unreadable: a run being made, or being mended; watch it.
            wanted = live(key) if got is None else not ended(got)
            with self._lock:
                if not wanted:
                    self._unwatch(kind, key)
                    if checkpoints is not None:
                        self._unwatch(checkpoints, key)
                    return False
                if key in watched.rels:
                    return False
                try:
                    wd = self._inotify.add_watch(path, DIR_MASK)
                except OSError:
                    self._unwatched[(kind, key)] = time.monotonic()
                    return False
                watched.add(wd, key)
                self._unwatched.pop((kind, key), None)
                if checkpoints is not None:
                    self._watch_run_dir(checkpoints, key)
                return True

        return settle

    def _unwatch(self, kind: str, rel: Names) -> None:
        """Stop watching ``rel`` (if it was); called with the lock held."""
        self._unwatched.pop((kind, rel), None)
        wd = self._watched[kind].retire(rel)
        if wd is not None:
            with contextlib.suppress(OSError):  # already gone with its directory
                self._inotify.rm_watch(wd)

    def _watch_run_dir(self, kind: str, key: RunKey) -> None:
        """Watch a run's directory in tree ``kind`` if it is there, a real directory, and not
        watched yet; called with the lock held."""
        watched = self._watched[kind]
        if key in watched.rels:
            return
        path = os.path.join(self._trees[kind].root, *key)
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return  # a link is for a scan to judge
            wd = self._inotify.add_watch(path, DIR_MASK)
        except FileNotFoundError:
            return
        except OSError:
            self._unwatched[(kind, key)] = time.monotonic()
            return
        watched.add(wd, key)
        self._unwatched.pop((kind, key), None)

    def prune_leaves(self, kind: str, keep: Callable[[Names], bool], before: float) -> int:
        """Stop watching the deepest directories of tree ``kind`` watched since before ``before``
        that ``keep`` no longer wants; how many were dropped."""
        tree, watched = self._trees[kind], self._watched[kind]
        with self._lock:
            old = [rel for rel, t in watched.added.items() if len(rel) == tree.depth and t < before]
        dropped = 0
        for rel in old:
            if keep(rel):
                continue
            with self._lock:
                if watched.added.get(rel, before) < before:
                    self._unwatch(kind, rel)
                    dropped += 1
        return dropped

    def take_over(self, kind: str, added: list[tuple[int, Names]], unwatched: list[Names]) -> None:
        """Take the watches scan workers added (and those they could not), then the events held for them."""
        now = time.monotonic()
        with self._lock:
            for wd, rel in added:
                self._watched[kind].add(wd, rel)
            self._unwatched.update(((kind, rel), now) for rel in unwatched)
            held, self._held = self._held, None
        if held:
            self._handle(held)

    def forget_unwatched_before(self, since: float) -> None:
        """After a scan that tried every directory: older failures are watched now, or gone."""
        with self._lock:
            self._unwatched = {k: t for k, t in self._unwatched.items() if t >= since}

    @property
    def unwatched(self) -> int:
        """How many directories inotify could not watch when last tried."""
        return len(self._unwatched)

    @property
    def watched(self) -> int:
        """How many directories of the trees are watched now."""
        with self._lock:
            return sum(len(w.rels) for w in self._watched.values())

    # ------------------------------------------------------------- events

    def _on_events(self) -> None:
        with self._lock:
            try:
                events = self._inotify.read(timeout=0)
            except BlockingIOError:
                return
            if self._held is not None:
                self._held.extend(events)
                return
        self._handle(events)

    def _find(self, wd: int) -> tuple[str, Names] | None:
        for kind, watched in self._watched.items():
            rel = watched.wds.get(wd)
            if rel is not None:
                return kind, rel
        return None

    def _handle(self, events: list[Event]) -> None:
        with self._lock:
            found_events = [(ev, self._find(ev.wd)) for ev in events]
            ancestors = set(self._ancestors.values())
        changed: set[Changed] = set()
        lost = roots = False
        for ev, found in found_events:
            if ev.mask & F.Q_OVERFLOW:
                lost = True
                continue
            if ev.wd in ancestors:
                roots = True  # something was made where a tree root is awaited
            if found is None:
                continue
            kind, rel = found
            if ev.mask & (F.IGNORED | F.MOVE_SELF):
                # Gone, or moved: what is at its name now (if anything) is
                # rescanned when its parent reports it, and watched then.
                with self._lock:
                    self._watched[kind].drop(ev.wd)
                roots = roots or rel == ()  # the tree's root itself
                continue
            if ev.name:  # not the directory itself: its parent reports that
                changed.add((kind, (*rel, ev.name)))
        if changed:
            self._on_changed(changed)
        if lost:
            self._on_lost()
        if roots:
            self._on_roots()

    # ------------------------------------------------------------- missing roots

    def await_roots(self) -> bool:
        """Watch the nearest existing folder above each missing tree root (blocking).

        True when a root exists that is not watched yet: one that was
        awaited, or one removed and made again. The viewer may start before
        the conductor has made its trees, and a tree may be removed and made
        again; without this, neither would show until a reconciliation scan.
        """
        appeared = False
        for kind, tree in self._trees.items():
            with self._lock:
                waiting = self._ancestors.get(kind)
                unwatched = () not in self._watched[kind].rels and (kind, ()) not in self._unwatched
            if os.path.isdir(tree.root):
                if waiting is not None:
                    with self._lock:
                        del self._ancestors[kind]
                    self._remove_unless_used(waiting)
                appeared = appeared or waiting is not None or unwatched
                continue
            ancestor = os.path.dirname(tree.root)
            while not os.path.isdir(ancestor) and ancestor != os.path.dirname(ancestor):
                ancestor = os.path.dirname(ancestor)
            with self._lock:
                try:
                    self._ancestors[kind] = self._inotify.add_watch(ancestor, _ANCESTOR_MASK)
                except OSError:
                    continue  # the periodic reconciliation will find the tree
            if waiting is not None and waiting != self._ancestors[kind]:
                self._remove_unless_used(waiting)
            # Made between the check above and the watch: its event came too early.
            appeared = appeared or os.path.isdir(tree.root)
        return appeared

    def _remove_unless_used(self, wd: int) -> None:
        with self._lock:
            if wd in self._ancestors.values() or self._find(wd) is not None:
                return
            with contextlib.suppress(OSError):  # already gone with its folder
                self._inotify.rm_watch(wd)
