"""A brute-force oracle for the viewer: walks the tree with os.scandir and json.

It shares no code with ``viewer_api`` (nor with ``common``): its own name
rule, its own timestamp parser (exact, in integer nanoseconds), its own
ordering. Every expectation the viewer tests hold is computed here from the
files as they are on disk at the time of the call.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from baton.v1 import job_pb2

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_TS_RE = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z")
STATE_NUMBER = {v.name: v.number for v in job_pb2.JobState.DESCRIPTOR.values}
RUNNING = job_pb2.JOB_STATE_RUNNING
FAILED = job_pb2.JOB_STATE_FAILED
FINAL_STATES = frozenset({job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED})
NS = 1_000_000_000

RunKey = tuple[str, str, str, str]
# project, group, name, run_id ("" in the plain layout), suffix.
CkptKey = tuple[str, str, str, str, str]


def valid_name(name: str) -> bool:
    return bool(NAME_RE.fullmatch(name))


def ts_ns(text: str | None) -> int:
    """Nanoseconds since the epoch of an RFC 3339 UTC timestamp; 0 when absent."""
    if not text:
        return 0
    m = _TS_RE.fullmatch(text)
    assert m, f"not a proto3 JSON timestamp: {text!r}"
    y, mo, d, h, mi, se = (int(x) for x in m.groups()[:6])
    secs = calendar.timegm((y, mo, d, h, mi, se, 0, 0, 0))
    return secs * NS + int((m.group(7) or "").ljust(9, "0"))


@dataclass(frozen=True)
class Run:
    key: RunKey
    data: dict[str, Any]
    path: Path

    @property
    def job_id(self) -> str:
        return str(self.data.get("id", ""))

    @property
    def state(self) -> int:
        state = self.data.get("state", 0)
        return state if isinstance(state, int) else STATE_NUMBER[state]

    def t(self, name: str) -> int:
        return ts_ns(self.data.get(name))

    @property
    def order_time(self) -> int:
        """Create time, else start time: what lists sort on."""
        return self.t("createTime") or self.t("startTime")

    @property
    def sort_key(self) -> tuple[int, str, str, str, str]:
        """Ascending order is the viewer's order: newest first, then names ascending."""
        return (-self.order_time, *self.key)

    @property
    def last_activity(self) -> int:
        return max(self.t("createTime"), self.t("startTime"), self.t("endTime"), self.t("heartbeatTime"))

    def heartbeat_age(self, now_ns: int) -> float:
        """Seconds since the last heartbeat (or the start, or the creation)."""
        last = self.t("heartbeatTime") or self.t("startTime") or self.t("createTime")
        return (now_ns - last) / NS

    def log(self) -> bytes | None:
        try:
            return (self.path / "output.log").read_bytes()
        except FileNotFoundError:
            return None


@dataclass(frozen=True)
class Ckpt:
    key: CkptKey
    path: Path
    mtime_ns: int
    size: int
    files: int
    config_file: str
    has_job_spec: bool

    @property
    def sort_key(self) -> tuple[int, str, str, str, str, str]:
        return (-self.mtime_ns, *self.key)

    @property
    def run_id(self) -> str:
        return self.key[3]

    @property
    def suffix(self) -> str:
        return self.key[4]

    @property
    def ref(self) -> str:
        """What names it in the Get calls: RUN_ID/SUFFIX, or SUFFIX in the plain layout."""
        return f"{self.run_id}/{self.suffix}" if self.run_id else self.suffix


def _dirs(path: Path) -> list[os.DirEntry[str]]:
    try:
        return sorted((e for e in os.scandir(path) if e.is_dir()), key=lambda e: e.name)
    except FileNotFoundError:
        return []


def _inside(root: Path, path: str) -> bool:
    real = os.path.realpath(path)
    return real == str(root) or real.startswith(str(root) + os.sep)


def _good(root: Path, entry: os.DirEntry[str]) -> bool:
    return valid_name(entry.name) and (not entry.is_symlink() or _inside(root, entry.path))


def read_job(path: str) -> dict[str, Any] | None:
    """The JSON of a status.json that is a Job in the proto3 JSON mapping, else None.

    What counts as "a Job in proto3 JSON" is protobuf's own parser's call
    (unknown fields allowed, as readers of status.json must allow them), with
    a known state.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
        data = json.loads(raw)
        json_format.Parse(raw, job_pb2.Job(), ignore_unknown_fields=True)
    except (OSError, ValueError, json_format.ParseError):
        return None
    if not isinstance(data, dict):
        return None
    # json_format, when told to ignore unknown fields, also lets a string stand
    # for a message field ("spec": "text"); proto3 JSON wants an object there.
    if not isinstance(data.get("spec", {}), dict):
        return None
    # An unknown field is ignored, but a state this reader cannot name is not a Job it can list.
    state = data.get("state", 0)
    if state not in STATE_NUMBER and state not in STATE_NUMBER.values():
        return None
    return data


def scan_runs(status_dir: Path) -> dict[RunKey, Run]:
    """Every run whose status.json is a Job (in a directory reached by valid names, inside the root)."""
    root = Path(os.path.realpath(status_dir))
    out: dict[RunKey, Run] = {}
    for p in _dirs(root):
        if not _good(root, p):
            continue
        for g in _dirs(Path(p.path)):
            if not _good(root, g):
                continue
            for n in _dirs(Path(g.path)):
                if not _good(root, n):
                    continue
                for r in _dirs(Path(n.path)):
                    if not _good(root, r):
                        continue
                    status = os.path.join(r.path, "status.json")
                    if os.path.islink(status) and not _inside(root, status):
                        continue
                    data = read_job(status)
                    if data is None:
                        continue
                    key = (p.name, g.name, n.name, r.name)
                    out[key] = Run(key, data, Path(r.path))
    return out


def _usage(path: str) -> tuple[int, int]:
    size = files = 0
    for dirpath, dirnames, filenames in os.walk(path):
        names = filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in names:
            size += os.lstat(os.path.join(dirpath, name)).st_size
            files += 1
    return size, files


def _is_run_dir(path: str) -> bool:
    """A run's checkpoint directory holds a .baton-run entry that is not a directory."""
    try:
        return not stat.S_ISDIR(os.lstat(os.path.join(path, ".baton-run")).st_mode)
    except FileNotFoundError:
        return False


def _complete(root: Path, entry: os.DirEntry[str]) -> bool:
    return not entry.name.startswith(".") and not entry.name.endswith(".tmp") and _good(root, entry)


def _ckpt(key: CkptKey, path: str) -> Ckpt:
    size, files = _usage(path)
    configs = [f for f in ("config.yaml", "config.json") if os.path.isfile(f"{path}/{f}")]
    return Ckpt(
        key,
        Path(path),
        os.stat(path).st_mtime_ns,
        size,
        files,
        configs[0] if configs else "",
        os.path.isfile(os.path.join(path, "job.json")),
    )


def scan_checkpoints(checkpoints_dir: Path) -> dict[CkptKey, Ckpt]:
    """Every complete checkpoint: a directory not named '.*' or '*.tmp', with a valid name,
    directly under a job's directory (the plain layout) or under a run's directory there
    (a directory holding a .baton-run file)."""
    root = Path(os.path.realpath(checkpoints_dir))
    out: dict[CkptKey, Ckpt] = {}
    for p in _dirs(root):
        if not _good(root, p):
            continue
        for g in _dirs(Path(p.path)):
            if not _good(root, g):
                continue
            for n in _dirs(Path(g.path)):
                if not _good(root, n):
                    continue
                for c in _dirs(Path(n.path)):
                    if not _complete(root, c):
                        continue
                    if not _is_run_dir(c.path):
                        key = (p.name, g.name, n.name, "", c.name)
                        out[key] = _ckpt(key, c.path)
                        continue
                    for d in _dirs(Path(c.path)):
                        if _complete(root, d):
                            key = (p.name, g.name, n.name, c.name, d.name)
                            out[key] = _ckpt(key, d.path)
    return out


class Oracle:
    """The expected answers for one snapshot of a tree."""

    def __init__(self, status_dir: Path, checkpoints_dir: Path) -> None:
        self.runs = scan_runs(status_dir)
        self.ckpts = scan_checkpoints(checkpoints_dir)

    # ------------------------------------------------------------------ runs

    def jobs(
        self, project: str = "", group: str = "", name: str = "", states: tuple[int, ...] = ()
    ) -> list[Run]:
        found = [
            r
            for r in self.runs.values()
            if (not project or r.key[0] == project)
            and (not group or r.key[1] == group)
            and (not name or r.key[2] == name)
            and (not states or r.state in states)
        ]
        return sorted(found, key=lambda r: r.sort_key)

    def running(self, project: str, stale_after: float, now_ns: int, include_stale: bool) -> list[Run]:
        return [
            r
            for r in self.jobs(project, states=(RUNNING,))
            if include_stale or r.heartbeat_age(now_ns) <= stale_after
        ]

    def recent(self, project: str, hours: int, limit: int, now_ns: int) -> list[Run]:
        since = now_ns - hours * 3600 * NS
        return [r for r in self.jobs(project) if r.order_time >= since][:limit]

    def recent_failures(self, project: str, now_ns: int) -> list[Run]:
        since = now_ns - 86400 * NS
        found = [r for r in self.jobs(project, states=(FAILED,)) if r.t("endTime") >= since]
        return sorted(found, key=lambda r: (-r.t("endTime"), r.sort_key))

    def state_counts(self, project: str = "") -> dict[int, int]:
        return dict(Counter(r.state for r in self.runs.values() if not project or r.key[0] == project))

    def projects(self) -> dict[str, tuple[int, dict[int, int], int]]:
        """project -> (run count, counts by state, newest create/start/end/heartbeat in ns)."""
        out: dict[str, tuple[int, dict[int, int], int]] = {}
        for project in sorted({k[0] for k in self.runs}):
            runs = [r for r in self.runs.values() if r.key[0] == project]
            out[project] = (
                len(runs),
                dict(Counter(r.state for r in runs)),
                max(r.last_activity for r in runs),
            )
        return out

    # ----------------------------------------------------------- checkpoints

    def checkpoints(self, project: str = "", group: str = "", name: str = "", run_id: str = "") -> list[Ckpt]:
        found = [
            c
            for c in self.ckpts.values()
            if (not project or c.key[0] == project)
            and (not group or c.key[1] == group)
            and (not name or c.key[2] == name)
            and (not run_id or c.run_id == run_id)
        ]
        return sorted(found, key=lambda c: c.sort_key)

    def latest(self, project: str, group: str, name: str, run_id: str = "") -> Ckpt | None:
        """The newest by time, then suffix, then run id."""
        found = self.checkpoints(project, group, name, run_id)
        return max(found, key=lambda c: (c.mtime_ns, c.suffix, c.run_id)) if found else None

    def matching(self, project: str, group: str, name: str, suffix: str) -> list[Ckpt]:
        """What a bare suffix names: the plain checkpoint and each run's of that suffix."""
        found = [c for c in self.checkpoints(project, group, name) if c.suffix == suffix]
        return sorted(found, key=lambda c: c.run_id)

    def addressable(self, c: Ckpt) -> bool:
        """Whether a ref names ``c`` alone: a plain checkpoint whose suffix a run's checkpoint
        has too can be named by no ref (its bare suffix is ambiguous)."""
        return bool(c.run_id) or len(self.matching(c.key[0], c.key[1], c.key[2], c.suffix)) == 1

    def ckpt_totals(self, project: str = "", group: str = "", name: str = "") -> tuple[int, int]:
        found = self.checkpoints(project, group, name)
        return len(found), sum(c.size for c in found)

    @staticmethod
    def config(ckpt: Ckpt) -> tuple[dict[str, Any], str] | None:
        """The checkpoint's config and its file: config.yaml first, else config.json."""
        yaml_path, json_path = ckpt.path / "config.yaml", ckpt.path / "config.json"
        if yaml_path.is_file():
            return yaml.safe_load(yaml_path.read_text()), "config.yaml"
        if json_path.is_file():
            return json.loads(json_path.read_text()), "config.json"
        return None


# ---------------------------------------------------------------------- logs


def last_lines(data: bytes, lines: int) -> bytes:
    """The last ``lines`` lines of ``data``; a final line without newline counts."""
    if not data or lines <= 0:
        return b""
    parts = data.split(b"\n")
    if parts[-1] == b"":
        # Ends with a newline: the empty string after it is not a line.
        return b"\n".join(parts[:-1][-lines:]) + b"\n"
    return b"\n".join(parts[-lines:])


def as_plain(value: Any) -> Any:
    """JSON-like data as google.protobuf.Struct gives it back: numbers become floats."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {str(k): as_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_plain(v) for v in value]
    return str(value)
