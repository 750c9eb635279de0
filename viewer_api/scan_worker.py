"""A cold-scan worker process: groups as JSON on stdin, its findings pickled on stdout.

Started by ``scan.scan_status_parallel`` as
``python -m viewer_api.scan_worker ROOT [INOTIFY_FD MASK]``. Given an inherited
inotify descriptor, it watches each directory before listing it, so the
parent's instance misses no change made while the scan runs. Runs travel as
plain tuples: they pickle and unpickle several times faster than objects.
"""

import ctypes
import ctypes.util
import gc
import json
import os
import pickle
import sys

from viewer_api.scan import ScanResult, scan_groups, to_wire


def _watcher(fd: int, mask: int, result: ScanResult) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    add_watch = libc.inotify_add_watch

    def watch(path: str, rel: tuple[str, ...]) -> None:
        wd = add_watch(fd, os.fsencode(path), mask)
        if wd < 0:
            result.unwatched += 1  # out of watches: the parent's reconcile covers it
        else:
            result.watched.append((wd, rel))

    result.on_dir = watch


def main() -> None:
    # Everything this process makes lives until it exits: collecting is wasted work.
    gc.disable()
    groups = [(str(p), str(g)) for p, g in json.loads(sys.stdin.buffer.read())]
    result = ScanResult()
    if len(sys.argv) > 3:
        _watcher(int(sys.argv[2]), int(sys.argv[3]), result)
    sys.stdout.buffer.write(pickle.dumps(to_wire(scan_groups(sys.argv[1], groups, result))))
    sys.stdout.buffer.flush()
    # The parent reads until end of file: skip the interpreter's tear-down
    # of everything made here (a quarter of a second at 50,000 runs).
    os._exit(0)


if __name__ == "__main__":
    main()
