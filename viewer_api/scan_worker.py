"""A cold-scan worker process: groups as JSON on stdin, its findings pickled on stdout.

Started by ``scan.scan_status_parallel``. Runs travel as plain tuples: they
pickle and unpickle several times faster than objects.
"""

import json
import pickle
import sys

from viewer_api.scan import scan_groups, to_wire


def main() -> None:
    groups = [(str(p), str(g)) for p, g in json.loads(sys.stdin.buffer.read())]
    sys.stdout.buffer.write(pickle.dumps(to_wire(scan_groups(sys.argv[1], groups))))


if __name__ == "__main__":
    main()
