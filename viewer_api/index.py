"""The viewer's in-memory index of runs and checkpoints, and the queries on it.

Runs are kept in sorted lists of keys, newest start first: one list for all
runs, and one per (project, group, name, state) bucket, so a filtered page
merges only the buckets that can match and never walks the whole index. Each
run keeps its status.json bytes; its Job message is built the first time it
is asked for and then kept in binary form (a few hundred bytes).

Checkpoints are kept by job, then run id (empty for the plain layout), then
suffix, as they lie on disk: two runs may have a checkpoint of the same
suffix. One sorted list, newest first, orders them all for listing.

The index is changed only on the event loop, by the indexer (``indexer.py``).
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from baton.common.errors import invalid_field
from baton.common.jobfile import job_from_json
from baton.common.jobs import JobFilter
from baton.common.paging import PageBytes, decode_token, encode_token, page_size
from baton.v1 import job_pb2
from baton.viewer_api.scan import CheckpointFile, JobKey, RunFile, RunKey, Signature

S = job_pb2
# Sort keys: ascending order is newest first.
SortKey = tuple[float, str, str, str, str]
Bucket = tuple[str, str, str, int]
# A checkpoint's place in the list: -create time, project, group, name, run id, suffix.
CheckpointSortKey = tuple[float, str, str, str, str, str]
# Checkpoints of one job: run id -> suffix -> checkpoint.
JobCheckpoints = dict[str, dict[str, CheckpointFile]]


class RunEntry:
    __slots__ = (
        "built",
        "create_ts",
        "end_ts",
        "heartbeat_ts",
        "job_id",
        "key",
        "payload",
        "signature",
        "sort",
        "start_ts",
        "state",
    )  # fmt: skip

    def __init__(self, rf: RunFile) -> None:
        self.key = rf.key
        self.job_id = rf.job_id
        self.state = rf.state
        self.create_ts = rf.create_ts
        self.start_ts = rf.start_ts
        self.end_ts = rf.end_ts
        self.heartbeat_ts = rf.heartbeat_ts
        self.signature: Signature = rf.signature
        # The status.json bytes until first built, then the serialized Job.
        self.payload: bytes = rf.raw
        self.built = False
        p, g, n, r = rf.key
        # One order for every list of either service: newest submission first.
        self.sort: SortKey = (-(rf.create_ts or rf.start_ts), p, g, n, r)

    def job(self) -> job_pb2.Job:
        if self.built:
            return job_pb2.Job.FromString(self.payload)
        try:
            job = job_from_json(self.payload)
        except ValueError:
            job = job_pb2.Job(id=self.job_id, state=self.state)  # type: ignore[arg-type]
        p, g, n, r = self.key
        job.project, job.group, job.name, job.run_id = p, g, n, r
        self.payload = job.SerializeToString()
        self.built = True
        return job

    @property
    def last_activity(self) -> float:
        return max(self.start_ts, self.end_ts, self.heartbeat_ts, self.create_ts)


def _bucket_matches(flt: JobFilter, b: Bucket) -> bool:
    return flt.matches_name(b[0], b[1], b[2]) and (not flt.states or b[3] in flt.states)


class Index:
    def __init__(self) -> None:
        self.runs: dict[RunKey, RunEntry] = {}
        self.by_id: dict[str, RunKey] = {}
        self._order: list[SortKey] = []
        self._buckets: dict[Bucket, list[SortKey]] = {}
        self._project_buckets: dict[str, set[Bucket]] = {}
        self.state_counts: Counter[int] = Counter()
        self.problems: dict[str, str] = {}
        self.checkpoints: dict[JobKey, JobCheckpoints] = {}
        self._ckpt_order: list[CheckpointSortKey] = []
        self.checkpoint_bytes = 0
        self.checkpoint_count = 0
        self._listeners: dict[RunKey, set[Callable[[], None]]] = {}
        self.last_full_scan = 0.0

    # ------------------------------------------------------------------ runs

    def upsert_run(self, rf: RunFile) -> None:
        old = self.runs.get(rf.key)
        if old is not None:
            self._unlink(old)
        entry = RunEntry(rf)
        self.runs[rf.key] = entry
        if entry.job_id:
            self.by_id[entry.job_id] = rf.key
        bisect.insort(self._order, entry.sort)
        bucket = (*rf.key[:3], rf.state)
        bisect.insort(self._buckets.setdefault(bucket, []), entry.sort)
        self._project_buckets.setdefault(rf.key[0], set()).add(bucket)
        self.state_counts[rf.state] += 1
        self._notify(rf.key)

    def load(self, runs: list[RunFile], checkpoints: list[CheckpointFile], problems: dict[str, str]) -> None:
        """Fill an empty index in one go (the cold start): sorting once beats 100,000 inserts."""
        assert not self.runs and not self.checkpoints, "load is for an empty index"
        self._load_runs(runs)
        for cf in checkpoints:
            self.checkpoints.setdefault(cf.key, {}).setdefault(cf.run_id, {})[cf.suffix] = cf
            self.checkpoint_bytes += cf.size_bytes
        self.checkpoint_count = len(checkpoints)
        self._ckpt_order = sorted(map(_ckpt_sort, checkpoints))
        self.problems = problems

    def _load_runs(self, runs: list[RunFile]) -> None:
        buckets: dict[Bucket, list[SortKey]] = {}
        for rf in runs:
            entry = RunEntry(rf)
            self.runs[rf.key] = entry
            if entry.job_id:
                self.by_id[entry.job_id] = rf.key
            bucket = (*rf.key[:3], rf.state)
            buckets.setdefault(bucket, []).append(entry.sort)
            self._project_buckets.setdefault(rf.key[0], set()).add(bucket)
            self.state_counts[rf.state] += 1
        self._order = sorted(e.sort for e in self.runs.values())
        for keys in buckets.values():
            keys.sort()
        self._buckets = buckets

    def remove_run(self, key: RunKey) -> None:
        entry = self.runs.pop(key, None)
        if entry is not None:
            self._unlink(entry)
            self._notify(key)

    def remove_runs_under(self, prefix: tuple[str, ...]) -> None:
        for key in [k for k in self.runs if k[: len(prefix)] == prefix]:
            self.remove_run(key)

    def _unlink(self, entry: RunEntry) -> None:
        if entry.job_id and self.by_id.get(entry.job_id) == entry.key:
            del self.by_id[entry.job_id]
        _remove_sorted(self._order, entry.sort)
        bucket = (*entry.key[:3], entry.state)
        lst = self._buckets.get(bucket)
        if lst is not None:
            _remove_sorted(lst, entry.sort)
            if not lst:
                del self._buckets[bucket]
                self._project_buckets[entry.key[0]].discard(bucket)
                if not self._project_buckets[entry.key[0]]:
                    del self._project_buckets[entry.key[0]]
        self.state_counts[entry.state] -= 1
        if self.state_counts[entry.state] <= 0:
            del self.state_counts[entry.state]

    def signatures(self) -> Mapping[RunKey, Signature]:
        """Each run's status.json signature, read live rather than copied (100,000 entries)."""
        return _Signatures(self.runs)

    # -------------------------------------------------------------- listeners

    def listen(self, key: RunKey, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` whenever run ``key`` changes; returns the way to stop."""
        self._listeners.setdefault(key, set()).add(callback)

        def stop() -> None:
            cbs = self._listeners.get(key)
            if cbs is not None:
                cbs.discard(callback)
                if not cbs:
                    del self._listeners[key]

        return stop

    def _notify(self, key: RunKey) -> None:
        for cb in list(self._listeners.get(key, ())):
            cb()

    # ---------------------------------------------------------------- queries

    def _iter_sorted(self, flt: JobFilter, after: SortKey | None) -> tuple[Iterator[SortKey], int]:
        """Matching sort keys after ``after``, newest first, and the total count."""
        if not (flt.project or flt.group or flt.name or flt.states):
            start = 0 if after is None else bisect.bisect_right(self._order, after)
            return iter(self._order[start:]), len(self._order)
        if flt.project:
            candidates: Iterable[Bucket] = self._project_buckets.get(flt.project, ())
        else:
            candidates = self._buckets.keys()
        lists = [self._buckets[b] for b in candidates if _bucket_matches(flt, b)]
        total = sum(len(lst) for lst in lists)
        iters = []
        for lst in lists:
            start = 0 if after is None else bisect.bisect_right(lst, after)
            if start < len(lst):
                iters.append(_from(lst, start))
        return heapq.merge(*iters), total

    def list_runs(
        self, flt: JobFilter, size: int, token: str, scope: str = "viewer.jobs"
    ) -> tuple[list[job_pb2.Job], str, int]:
        """One page of matching runs, newest first; with the token for the next and the total."""
        limit = page_size(size)
        after = sort_key(decode_token(scope, flt.token_key(), token))
        it, total = self._iter_sorted(flt, after)
        page: list[RunEntry] = []
        jobs: list[job_pb2.Job] = []
        page_bytes = PageBytes()
        for sk in it:
            entry = self.runs[sk[1:]]  # type: ignore[index]
            job = entry.job() if len(page) < limit else None
            if job is None or not page_bytes.take(job):
                return jobs, encode_token(scope, flt.token_key(), list(page[-1].sort)), total
            page.append(entry)
            jobs.append(job)
        return jobs, "", total

    def running(self, project: str) -> list[RunEntry]:
        flt = JobFilter(project=project, states=(S.JOB_STATE_RUNNING,))
        it, _ = self._iter_sorted(flt, None)
        return [self.runs[sk[1:]] for sk in it]  # type: ignore[index]

    def recent(self, project: str, since_ts: float, limit: int) -> list[job_pb2.Job]:
        flt = JobFilter(project=project)
        it, _ = self._iter_sorted(flt, None)
        out: list[job_pb2.Job] = []
        for sk in it:
            if -sk[0] < since_ts or len(out) >= limit:
                break
            out.append(self.runs[sk[1:]].job())  # type: ignore[index]
        return out

    def projects(self) -> list[tuple[str, int, Counter[int], float]]:
        out: list[tuple[str, int, Counter[int], float]] = []
        for project in sorted(self._project_buckets):
            counts: Counter[int] = Counter()
            last = 0.0
            for bucket in self._project_buckets[project]:
                keys = self._buckets[bucket]
                counts[bucket[3]] += len(keys)
                for sk in keys:
                    entry = self.runs[sk[1:]]  # type: ignore[index]
                    last = max(last, entry.last_activity)
            out.append((project, sum(counts.values()), counts, last))
        return out

    def failures_since(self, project: str, since_ts: float) -> list[RunEntry]:
        it, _ = self._iter_sorted(JobFilter(project=project, states=(S.JOB_STATE_FAILED,)), None)
        found = [self.runs[sk[1:]] for sk in it]  # type: ignore[index]
        recent = [e for e in found if (e.end_ts or -1) >= since_ts]
        recent.sort(key=lambda e: -e.end_ts)
        return recent

    def project_state_counts(self, project: str) -> Counter[int]:
        if not project:
            return Counter(self.state_counts)
        counts: Counter[int] = Counter()
        for bucket in self._project_buckets.get(project, ()):
            counts[bucket[3]] += len(self._buckets[bucket])
        return counts

    # ------------------------------------------------------------ checkpoints

    def upsert_checkpoint(self, cf: CheckpointFile) -> None:
        self.remove_checkpoint(cf.key, cf.run_id, cf.suffix)
        self.checkpoints.setdefault(cf.key, {}).setdefault(cf.run_id, {})[cf.suffix] = cf
        bisect.insort(self._ckpt_order, _ckpt_sort(cf))
        self.checkpoint_bytes += cf.size_bytes
        self.checkpoint_count += 1

    def remove_checkpoint(self, key: JobKey, run_id: str, suffix: str) -> None:
        runs = self.checkpoints.get(key, {})
        by_suffix = runs.get(run_id, {})
        if suffix not in by_suffix:
            return
        cf = by_suffix.pop(suffix)
        if not by_suffix:
            del runs[run_id]
            if not runs:
                del self.checkpoints[key]
        _remove_sorted(self._ckpt_order, _ckpt_sort(cf))
        self.checkpoint_bytes -= cf.size_bytes
        self.checkpoint_count -= 1

    def remove_checkpoint_item(self, key: JobKey, item: str) -> None:
        """Forget what one entry of a job's checkpoint directory held: a plain checkpoint, or a run's."""
        self.remove_checkpoint(key, "", item)
        for suffix in list(self.checkpoints.get(key, {}).get(item, ())):
            self.remove_checkpoint(key, item, suffix)

    def remove_checkpoints_under(self, prefix: tuple[str, ...]) -> None:
        """Forget the checkpoints of every job under ``prefix`` (at most project, group, name)."""
        for key in [k for k in self.checkpoints if k[: len(prefix)] == prefix]:
            for cf in list(self.job_checkpoints(key)):
                self.remove_checkpoint(key, cf.run_id, cf.suffix)

    def job_checkpoints(self, key: JobKey, run_id: str | None = None) -> Iterator[CheckpointFile]:
        """A job's checkpoints (of one run, when ``run_id`` is given; "" is the plain layout)."""
        runs = self.checkpoints.get(key, {})
        for by_suffix in runs.values() if run_id is None else [runs.get(run_id, {})]:
            yield from by_suffix.values()

    def all_checkpoints(self) -> Iterator[CheckpointFile]:
        for runs in self.checkpoints.values():
            for by_suffix in runs.values():
                yield from by_suffix.values()

    def find_checkpoints(self, key: JobKey, run_id: str, suffix: str) -> list[CheckpointFile]:
        """What a ref names: with a run id, its checkpoint; without, the plain checkpoint and each
        run's of that suffix (plain first, then by run id)."""
        runs = self.checkpoints.get(key, {})
        if run_id:
            found = runs.get(run_id, {}).get(suffix)
            return [found] if found is not None else []
        return [runs[run][suffix] for run in sorted(runs) if suffix in runs[run]]

    def list_checkpoints(
        self, project: str, group: str, name: str, run_id: str, size: int, token: str
    ) -> tuple[list[CheckpointFile], str]:
        limit = page_size(size)
        fkey = [project, group, name, run_id]
        after = checkpoint_sort_key(decode_token("viewer.checkpoints", fkey, token))
        start = 0 if after is None else bisect.bisect_right(self._ckpt_order, after)
        out: list[CheckpointFile] = []
        for sk in self._ckpt_order[start:]:
            _, p, g, n, run, suffix = sk
            if (
                (project and p != project)
                or (group and g != group)
                or (name and n != name)
                or (run_id and run != run_id)
            ):
                continue
            if len(out) == limit:
                return out, encode_token("viewer.checkpoints", fkey, list(_ckpt_sort(out[-1])))
            out.append(self.checkpoints[(p, g, n)][run][suffix])
        return out, ""

    def latest_checkpoint(self, key: JobKey, run_id: str | None = None) -> CheckpointFile | None:
        """The newest checkpoint of a job (of one run, when ``run_id`` is given): by create time,
        then suffix, then run id, as ``Layout.find_checkpoints`` picks ``latest`` on disk."""
        return max(
            self.job_checkpoints(key, run_id), key=lambda c: (c.create_ts, c.suffix, c.run_id), default=None
        )

    def checkpoint_totals(self, project: str, group: str, name: str) -> tuple[int, int]:
        count = size = 0
        for key in self.checkpoints:
            if (project and key[0] != project) or (group and key[1] != group) or (name and key[2] != name):
                continue
            for cf in self.job_checkpoints(key):
                count += 1
                size += cf.size_bytes
        return count, size


class _Signatures(Mapping[RunKey, Signature]):
    """A live view of the runs' signatures. A scan thread may read it while the
    loop changes the index: each lookup is one dict read, atomic in CPython,
    and a signature newer than the scan only means a file already re-read."""

    def __init__(self, runs: dict[RunKey, RunEntry]) -> None:
        self._runs = runs

    def __getitem__(self, key: RunKey) -> Signature:
        return self._runs[key].signature

    def get(self, key: RunKey, default: Any = None) -> Any:
        entry = self._runs.get(key)
        return default if entry is None else entry.signature

    def __iter__(self) -> Iterator[RunKey]:
        return iter(self._runs)

    def __len__(self) -> int:
        return len(self._runs)


def _from(lst: list[SortKey], start: int) -> Iterator[SortKey]:
    for i in range(start, len(lst)):
        yield lst[i]


def _ckpt_sort(cf: CheckpointFile) -> CheckpointSortKey:
    p, g, n = cf.key
    return (-cf.create_ts, p, g, n, cf.run_id, cf.suffix)


def _remove_sorted(lst: list[Any], item: Any) -> None:
    i = bisect.bisect_left(lst, item)
    if i < len(lst) and lst[i] == item:
        del lst[i]


def sort_key(pos: Any) -> SortKey | None:
    """The position a page token holds: (-time, four names); INVALID_ARGUMENT otherwise."""
    if pos is None:
        return None
    if (
        isinstance(pos, list)
        and len(pos) == 5
        and isinstance(pos[0], int | float)
        and all(isinstance(p, str) for p in pos[1:])
    ):
        return (float(pos[0]), pos[1], pos[2], pos[3], pos[4])
    raise invalid_field("page_token", "is not a page token from this list")


def checkpoint_sort_key(pos: Any) -> CheckpointSortKey | None:
    """The position a ListCheckpoints page token holds; INVALID_ARGUMENT otherwise."""
    if pos is None:
        return None
    if (
        isinstance(pos, list)
        and len(pos) == 6
        and isinstance(pos[0], int | float)
        and all(isinstance(p, str) for p in pos[1:])
    ):
        return (float(pos[0]), pos[1], pos[2], pos[3], pos[4], pos[5])
    raise invalid_field("page_token", "is not a page token from this list")
