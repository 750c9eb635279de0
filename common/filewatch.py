"""Change notification for files, through inotify, shared by every reader.

One inotify instance per event loop watches the directories that readers care
about; each reader of a path holds a subscription whose ``changed`` event is
set whenever that file is written, created, moved into place or removed. Many
readers of one log cost one kernel watch, and nothing polls.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from inotify_simple import INotify
from inotify_simple import flags as F

_MASK = (
    F.MODIFY
    | F.CREATE
    | F.MOVED_TO
    | F.MOVED_FROM
    | F.DELETE
    | F.ATTRIB
    | F.CLOSE_WRITE
    | F.DELETE_SELF
    | F.MOVE_SELF
)


@dataclass(eq=False)
class Subscription:
    """A reader's interest in one file; ``changed`` is set on every change."""

    path: Path
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    watched: bool = False


class FileWatcher:
    """Watches directories with inotify and wakes the subscribers of their files."""

    def __init__(self) -> None:
        self._inotify: INotify | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wd_dirs: dict[int, str] = {}
        self._dir_wds: dict[str, int] = {}
        self._subs: dict[str, dict[str, set[Subscription]]] = {}  # dir -> name -> subs

    def _ensure(self) -> INotify:
        if self._inotify is None:
            self._inotify = INotify(nonblocking=True)
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._inotify.fileno(), self._on_events)
        return self._inotify

    def subscribe(self, path: Path, wake: asyncio.Event | None = None) -> Subscription:
        """Start watching ``path`` (its directory must exist for a kernel watch).

        When the directory does not exist yet, ``watched`` stays False and the
        caller should fall back to checking now and then.
        """
        sub = Subscription(path, wake or asyncio.Event())
        directory, name = str(path.parent), path.name
        inotify = self._ensure()
        if directory not in self._dir_wds:
            try:
                wd = inotify.add_watch(directory, _MASK)
            except OSError:
                return sub
            self._dir_wds[directory] = wd
            self._wd_dirs[wd] = directory
        self._subs.setdefault(directory, {}).setdefault(name, set()).add(sub)
        sub.watched = True
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if not sub.watched:
            return
        directory, name = str(sub.path.parent), sub.path.name
        by_name = self._subs.get(directory, {})
        subs = by_name.get(name)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del by_name[name]
        if not by_name:
            self._subs.pop(directory, None)
            wd = self._dir_wds.pop(directory, None)
            if wd is not None:
                self._wd_dirs.pop(wd, None)
                if self._inotify is not None:
                    # The directory may be gone already, and its watch with it.
                    with contextlib.suppress(OSError):
                        self._inotify.rm_watch(wd)
        sub.watched = False

    def _on_events(self) -> None:
        assert self._inotify is not None
        try:
            events = self._inotify.read(timeout=0)
        except BlockingIOError:
            return
        for ev in events:
            directory = self._wd_dirs.get(ev.wd)
            if directory is None:
                continue
            by_name = self._subs.get(directory, {})
            if ev.mask & (F.DELETE_SELF | F.MOVE_SELF | F.IGNORED | F.Q_OVERFLOW) or not ev.name:
                targets = [s for subs in by_name.values() for s in subs]
            else:
                targets = list(by_name.get(ev.name, ()))
            for sub in targets:
                sub.changed.set()
            if ev.mask & F.IGNORED:
                # The kernel dropped the watch (directory removed): forget it.
                self._wd_dirs.pop(ev.wd, None)
                if self._dir_wds.get(directory) == ev.wd:
                    del self._dir_wds[directory]
                for s in targets:
                    s.watched = False

    @property
    def watch_count(self) -> int:
        """Kernel watches held now (for leak checks)."""
        return len(self._dir_wds)

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for by in self._subs.values() for s in by.values())

    def close(self) -> None:
        if self._inotify is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None
