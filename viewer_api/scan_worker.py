"""A cold-scan worker process: job directories as JSON on stdin, its findings on stdout
in pickled frames, sent as it goes so that its parent unpickles while it reads.

Started by ``parallel_scan.scan_status_parallel`` as
``python -m viewer_api.scan_worker ROOT [INOTIFY_FD MASK]``. Given an inherited
inotify descriptor, it watches each job directory before listing it, and each
run directory whose run may still change once read (then reads it again), so
the parent's instance misses no change made while the scan runs; an ended
run's directory takes no watch. Runs travel as plain tuples: they pickle and
unpickle several times faster than objects.
"""

import ctypes
import ctypes.util
import gc
import json
import os
import sys

from baton.viewer_api.parallel_scan import FRAME_RUNS, send_frame
from baton.viewer_api.scan import RunFile, RunKey, ScanResult, ended, scan_status_under


def _watcher(fd: int, mask: int, result: ScanResult) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    add_watch, rm_watch = libc.inotify_add_watch, libc.inotify_rm_watch
    encoding = sys.getfilesystemencoding()  # as os.fsencode, without its call per directory

    def add(path: str, rel: tuple[str, ...]) -> bool:
        wd = add_watch(fd, path.encode(encoding, "surrogateescape"), mask)
        if wd < 0:
            result.unwatched.append(rel)  # out of watches: reconciliation scans cover it
            return False
        result.watched.append((wd, rel))
        return True

    def watch(path: str, rel: tuple[str, ...]) -> bool:
        return add(path, rel)

    def watch_live(path: str, key: RunKey, got: RunFile | str | None) -> bool:
        if not ended(got):
            return add(path, key)
        if result.watched and result.watched[-1][1] == key:
            # Watched when first read, ended when read again: the watch is not needed.
            rm_watch(fd, result.watched.pop()[0])
        return False

    result.on_dir = watch
    result.on_run = watch_live


def main() -> None:
    # Everything this process makes lives until it exits: collecting is wasted work.
    gc.disable()
    asked = json.loads(sys.stdin.buffer.read())
    jobs = [(str(p), str(g), str(n)) for p, g, n in asked["jobs"]]
    result = ScanResult(summaries=bool(asked["summaries"]))
    if len(sys.argv) > 3:
        _watcher(int(sys.argv[2]), int(sys.argv[3]), result)
    root, out = sys.argv[1], sys.stdout.buffer
    for job in jobs:
        scan_status_under(root, job, os.path.join(root, *job), result, {})
        if len(result.runs) >= FRAME_RUNS:
            send_frame(out, result)
    send_frame(out, result)
    out.flush()
    # The parent reads until end of file: skip the interpreter's tear-down
    # of everything made here (a quarter of a second at 50,000 runs).
    os._exit(0)


if __name__ == "__main__":
    main()
