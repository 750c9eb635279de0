"""A cold-scan worker process: groups as JSON on stdin, a pickled ScanResult on stdout.

Started by ``scan.scan_status_parallel``; a module of its own so that what it
pickles belongs to ``viewer_api.scan``, not to ``__main__``.
"""

import json
import pickle
import sys

from viewer_api.scan import scan_groups


def main() -> None:
    groups = [(str(p), str(g)) for p, g in json.loads(sys.stdin.buffer.read())]
    sys.stdout.buffer.write(pickle.dumps(scan_groups(sys.argv[1], groups)))


if __name__ == "__main__":
    main()
