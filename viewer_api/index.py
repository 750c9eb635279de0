"""The viewer's in-memory index of runs and checkpoints, and the queries on it.

Runs are kept in sorted lists of keys, newest submission first: one list for
all runs, one per (project, state), and one per (project, group, name, state)
bucket, so a filtered page merges the fewest lists that hold exactly what can
match and never walks the whole index. The lists are ``SortedList``s: a run
added at the front of a million costs no more than one added anywhere (a
plain list moves every key behind it).

Each run is a compact record (``RunEntry``): its names, id, state, the times
the queries need and its status.json signature; no status bytes. Only runs
that may still change (not ended) and runs a client follows keep their Job in
memory. An ended run's Job is read from its file when a page asks for it
(``service.py``, in a thread) and then kept, with those the indexer has just
read, in a cache bounded in bytes (``JobCache``); at a million ended runs
that is the difference between a few hundred bytes a run and a few kilobytes.

Counts are kept as runs come and go: by state, the newest activity of each
project's runs in each state, and each project's FAILED runs by end time, so
the dashboard and the project list never walk every run.

Checkpoints are kept by job, then run id (empty for the plain layout), then
suffix, as they lie on disk: two runs may have a checkpoint of the same
suffix. One sorted list, newest first, orders them all for listing.

The index is changed only on the event loop, by the indexer (``indexer.py``).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from sortedcontainers import SortedList

from baton.common.errors import invalid_field
from baton.common.jobfile import job_from_json
from baton.common.jobs import JobFilter
from baton.common.paging import decode_token, encode_token, page_size
from baton.v1 import job_pb2
from baton.viewer_api.scan import FINAL_STATES, CheckpointFile, JobKey, RunFile, RunKey, Signature

S = job_pb2
# Sort keys: ascending order is newest first.
SortKey = tuple[float, str, str, str, str]
# A FAILED run's place among its project's: -end time, then its sort key.
FailedKey = tuple[float, float, str, str, str, str]
Bucket = tuple[str, str, str, int]
ProjectState = tuple[str, int]
# Every state a run may be in, in the enum's order.
_ALL_STATES = tuple(v.number for v in job_pb2.JobState.DESCRIPTOR.values)
# A checkpoint's place in the list: -create time, project, group, name, run id, suffix.
CheckpointSortKey = tuple[float, str, str, str, str, str]
# Checkpoints of one job: run id -> suffix -> checkpoint.
JobCheckpoints = dict[str, dict[str, CheckpointFile]]
# Bytes of Jobs the cache keeps: about 30,000 ended runs' (a few pages of every list).
JOB_CACHE_BYTES = 24 << 20
# What one cached Job costs besides its bytes (its entry, key and tuple), roughly.
_CACHE_ITEM_OVERHEAD = 160
# The FAILED runs of every project together, in ``Index._failed``: no project has an empty name.
_ALL = ""


def build_job(raw: bytes, key: RunKey) -> bytes | None:
    """A status.json as a serialized Job under ``key``'s names; None when it is not a Job."""
    try:
        job = job_from_json(raw)
    except ValueError:
        return None
    job.project, job.group, job.name, job.run_id = key
    return job.SerializeToString()


class RunEntry:
    """One run: what the queries need, and its Job only while it is live or followed."""

    __slots__ = (
        "activity",
        "beat",
        "built",
        "end_ts",
        "job_id",
        "key",
        "payload",
        "signature",
        "sort",
        "state",
    )  # fmt: skip

    def __init__(self, rf: RunFile, keep: bool) -> None:
        self.key = rf.key
        self.job_id = rf.job_id
        self.state = rf.state
        self.end_ts = rf.end_ts
        # The newest of its times (a project's last activity), and what a heartbeat's age counts from.
        self.activity = max(rf.start_ts, rf.end_ts, rf.heartbeat_ts, rf.create_ts)
        self.beat = rf.heartbeat_ts or rf.start_ts or rf.create_ts
        self.signature: Signature = rf.signature
        # The status.json bytes until first built, then the serialized Job; None when not kept.
        self.payload: bytes | None = rf.raw if keep and rf.raw else None
        self.built = False
        p, g, n, r = rf.key
        # One order for every list of either service: newest submission first.
        self.sort: SortKey = (-(rf.create_ts or rf.start_ts), p, g, n, r)

    @classmethod
    def restore(
        cls,
        key: RunKey,
        job_id: str,
        state: int,
        sort_ts: float,
        end_ts: float,
        activity: float,
        beat: float,
        signature: Signature,
    ) -> RunEntry:
        """A record as a snapshot (``snapshot.py``) kept it: no Job (its file is read when asked).

        ``sort_ts`` is the first item of its sort key. TypeError when a field is not of its type.
        """
        if (
            job_id.__class__ is not str
            or state.__class__ is not int
            or signature.__class__ is not int
            or not all(x.__class__ is float or x.__class__ is int for x in (sort_ts, end_ts, activity, beat))
        ):
            raise TypeError("a run's record")
        self = cls.__new__(cls)
        self.key, self.job_id, self.state, self.end_ts = key, job_id, state, float(end_ts)
        self.activity, self.beat, self.signature = float(activity), float(beat), signature
        self.payload, self.built = None, False
        self.sort = (float(sort_ts), *key)  # type: ignore[assignment]
        return self

    @property
    def live(self) -> bool:
        return self.state not in FINAL_STATES

    def job(self) -> job_pb2.Job | None:
        """The Job kept in memory; None when it is not kept (then its file is read)."""
        if self.payload is None:
            return None
        if not self.built:
            data = build_job(self.payload, self.key)
            if data is None:
                return fallback_job(self)
            self.payload, self.built = data, True
        return job_pb2.Job.FromString(self.payload)


def fallback_job(entry: RunEntry) -> job_pb2.Job:
    """What the index knows of a run whose file cannot be read as a Job now: id, state, names."""
    p, g, n, r = entry.key
    return job_pb2.Job(id=entry.job_id, state=entry.state, project=p, group=g, name=n, run_id=r)  # type: ignore[arg-type]


class JobCache:
    """Jobs of ended runs lately read or served, by run, in at most ``max_bytes``.

    An item holds the signature of the file it came from: once the index has
    a newer one, the item is stale and not served. Items come in as
    status.json bytes (from the indexer, which read them anyway) and are
    built into Jobs the first time they are asked for.
    """

    def __init__(self, max_bytes: int = JOB_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[RunKey, tuple[Signature, bytes, bool]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        """Bytes held, roughly."""
        return self._bytes

    def get(self, key: RunKey, signature: Signature) -> job_pb2.Job | None:
        item = self._items.get(key)
        if item is None:
            return None
        sig, payload, built = item
        if sig != signature:
            self.drop(key)
            return None
        self._items.move_to_end(key)
        if not built:
            data = build_job(payload, key)
            if data is None:
                self.drop(key)
                return None
            self.put(key, sig, data, True)
            payload = data
        return job_pb2.Job.FromString(payload)

    def take(self, key: RunKey, signature: Signature) -> tuple[bytes, bool] | None:
        """Remove and return an item's bytes (and whether built), if it is of ``signature``."""
        item = self._items.get(key)
        if item is None:
            return None
        self.drop(key)
        return (item[1], item[2]) if item[0] == signature else None

    def put(self, key: RunKey, signature: Signature, payload: bytes, built: bool) -> None:
        self.drop(key)
        self._items[key] = (signature, payload, built)
        self._bytes += len(payload) + _CACHE_ITEM_OVERHEAD
        while self._bytes > self.max_bytes and self._items:
            _, (_, old, _) = self._items.popitem(last=False)
            self._bytes -= len(old) + _CACHE_ITEM_OVERHEAD

    def drop(self, key: RunKey) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= len(item[1]) + _CACHE_ITEM_OVERHEAD


def _bucket_matches(flt: JobFilter, b: Bucket) -> bool:
    return flt.matches_name(b[0], b[1], b[2]) and (not flt.states or b[3] in flt.states)


def _failed_key(entry: RunEntry) -> FailedKey:
    return (-entry.end_ts, *entry.sort)


class Index:
    def __init__(self, cache_bytes: int = JOB_CACHE_BYTES) -> None:
        self.runs: dict[RunKey, RunEntry] = {}
        self.by_id: dict[str, RunKey] = {}
        # Sort keys, newest first: of all runs; by project and state; by bucket.
        self._order: SortedList = SortedList()
        self._by_project: dict[ProjectState, SortedList] = {}
        self._buckets: dict[Bucket, SortedList] = {}
        self._project_buckets: dict[str, set[Bucket]] = {}
        # The newest activity of each project's runs in each state; None when
        # the newest left (found again when asked).
        self._activity: dict[ProjectState, float | None] = {}
        # FAILED runs by end time, newest first: per project, and of all (``_ALL``).
        self._failed: dict[str, SortedList] = {}
        self.state_counts: Counter[int] = Counter()
        self.cache = JobCache(cache_bytes)
        self.problems: dict[str, str] = {}
        self.checkpoints: dict[JobKey, JobCheckpoints] = {}
        self._ckpt_order: list[CheckpointSortKey] = []
        self.checkpoint_bytes = 0
        self.checkpoint_count = 0
        self._listeners: dict[RunKey, set[Callable[[], None]]] = {}
        self.last_full_scan = 0.0
        # Counts changes to runs and checkpoints: whether a snapshot written earlier is behind.
        self.changes = 0

    # ------------------------------------------------------------------ runs

    def _held(self, key: RunKey, state: int) -> bool:
        """Whether a run keeps its Job in memory: it may still change, or a client follows it."""
        return state not in FINAL_STATES or key in self._listeners

    def upsert_run(self, rf: RunFile) -> None:
        old = self.runs.get(rf.key)
        if old is not None:
            self._unlink(old)
        held = self._held(rf.key, rf.state)
        entry = RunEntry(rf, held)
        if held or not rf.raw:
            self.cache.drop(rf.key)
        else:
            # Just read, so likely asked for soon (a run that has just ended, say).
            self.cache.put(rf.key, rf.signature, rf.raw, False)
        self._link(entry)
        self.changes += 1
        self._notify(rf.key)

    def _link(self, entry: RunEntry) -> None:
        key, state = entry.key, entry.state
        self.runs[key] = entry
        if entry.job_id:
            self.by_id[entry.job_id] = key
        self._order.add(entry.sort)
        ps = (key[0], state)
        keys = self._by_project.get(ps)
        if keys is None:
            keys = self._by_project[ps] = SortedList()
            self._activity[ps] = entry.activity
        else:
            newest = self._activity[ps]
            if newest is not None and entry.activity > newest:
                self._activity[ps] = entry.activity
        keys.add(entry.sort)
        bucket = (key[0], key[1], key[2], state)
        keys = self._buckets.get(bucket)
        if keys is None:
            keys = self._buckets[bucket] = SortedList()
            self._project_buckets.setdefault(key[0], set()).add(bucket)
        keys.add(entry.sort)
        if state == S.JOB_STATE_FAILED:
            fk = _failed_key(entry)
            for project in (key[0], _ALL):
                self._failed.setdefault(project, SortedList()).add(fk)
        self.state_counts[state] += 1

    def load(self, runs: list[RunFile], checkpoints: list[CheckpointFile], problems: dict[str, str]) -> None:
        """Fill an empty index in one go (the cold start): sorting once beats a million inserts."""
        loader = self.loader()
        loader.add(runs)
        loader.finish(checkpoints, problems)

    def loader(self) -> Loader:
        """What fills this empty index from a cold scan, part by part."""
        assert not self.runs and not self.checkpoints, "load is for an empty index"
        return Loader(self)

    def remove_run(self, key: RunKey) -> None:
        entry = self.runs.pop(key, None)
        if entry is not None:
            self._unlink(entry)
            self.cache.drop(key)
            self.changes += 1
            self._notify(key)

    def keys_under(self, prefix: tuple[str, ...]) -> list[RunKey]:
        """The runs whose names begin with ``prefix``, found through the buckets, not every run."""
        if len(prefix) >= 4:
            key: RunKey = prefix[:4]  # type: ignore[assignment]
            return [key] if key in self.runs else []
        if not prefix:
            return list(self.runs)
        n = len(prefix)
        return [
            sk[1:]  # type: ignore[misc]
            for bucket in self._project_buckets.get(prefix[0], ())
            if bucket[:n] == prefix
            for sk in self._buckets[bucket]
        ]

    def remove_runs_under(self, prefix: tuple[str, ...]) -> None:
        for key in self.keys_under(prefix):
            self.remove_run(key)

    def _unlink(self, entry: RunEntry) -> None:
        key, state = entry.key, entry.state
        if entry.job_id and self.by_id.get(entry.job_id) == key:
            del self.by_id[entry.job_id]
        self._order.discard(entry.sort)
        ps = (key[0], state)
        keys = self._by_project.get(ps)
        if keys is not None:
            keys.discard(entry.sort)
            if not keys:
                del self._by_project[ps]
                del self._activity[ps]
            else:
                newest = self._activity[ps]
                if newest is not None and entry.activity >= newest:
                    self._activity[ps] = None
        bucket = (key[0], key[1], key[2], state)
        keys = self._buckets.get(bucket)
        if keys is not None:
            keys.discard(entry.sort)
            if not keys:
                del self._buckets[bucket]
                self._project_buckets[key[0]].discard(bucket)
                if not self._project_buckets[key[0]]:
                    del self._project_buckets[key[0]]
        if state == S.JOB_STATE_FAILED:
            fk = _failed_key(entry)
            for project in (key[0], _ALL):
                failed = self._failed.get(project)
                if failed is not None:
                    failed.discard(fk)
                    if not failed:
                        del self._failed[project]
        self.state_counts[state] -= 1
        if self.state_counts[state] <= 0:
            del self.state_counts[state]

    def signatures(self) -> Mapping[RunKey, Signature]:
        """Each run's status.json signature, read live rather than copied (a million entries)."""
        return _Signatures(self.runs)

    def is_live(self, key: tuple[str, ...]) -> bool:
        """Whether the run is indexed in a state it may leave (read by scan threads: one dict read)."""
        entry = self.runs.get(key)  # type: ignore[arg-type]
        return entry is not None and entry.state not in FINAL_STATES

    def is_ended(self, key: tuple[str, ...]) -> bool:
        """Whether the run is indexed in a state it never leaves (read by scan threads)."""
        entry = self.runs.get(key)  # type: ignore[arg-type]
        return entry is not None and entry.state in FINAL_STATES

    def live_keys(self) -> list[RunKey]:
        """The runs that may still change (every run looked at: a few tens of ms at a million)."""
        return [key for key, entry in self.runs.items() if entry.state not in FINAL_STATES]

    # ------------------------------------------------------------------ jobs

    def job_in_memory(self, entry: RunEntry) -> job_pb2.Job | None:
        """A run's Job from memory (its own, or the cache's); None when its file must be read."""
        job = entry.job()
        return job if job is not None else self.cache.get(entry.key, entry.signature)

    def remember(self, entry: RunEntry, data: bytes) -> None:
        """Keep the serialized Job just read from ``entry``'s file (of the signature it has)."""
        if self.runs.get(entry.key) is not entry:
            return  # changed or gone meanwhile: what was read is not this entry's
        if self._held(entry.key, entry.state):
            if entry.payload is None:
                entry.payload, entry.built = data, True
        else:
            self.cache.put(entry.key, entry.signature, data, True)

    # -------------------------------------------------------------- listeners

    def listen(self, key: RunKey, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` whenever run ``key`` changes; returns the way to stop.

        A followed run keeps its Job in memory, whatever its state, until the last listener stops.
        """
        self._listeners.setdefault(key, set()).add(callback)
        entry = self.runs.get(key)
        if entry is not None and entry.payload is None:
            cached = self.cache.take(key, entry.signature)
            if cached is not None:
                entry.payload, entry.built = cached

        def stop() -> None:
            cbs = self._listeners.get(key)
            if cbs is None:
                return
            cbs.discard(callback)
            if cbs:
                return
            del self._listeners[key]
            entry = self.runs.get(key)
            if entry is not None and not entry.live and entry.payload is not None:
                self.cache.put(key, entry.signature, entry.payload, entry.built)
                entry.payload = None

        return stop

    def _notify(self, key: RunKey) -> None:
        for cb in list(self._listeners.get(key, ())):
            cb()

    # ---------------------------------------------------------------- queries

    def _lists(self, flt: JobFilter) -> list[SortedList]:
        """The fewest sorted lists that hold exactly the runs ``flt`` matches."""
        states = set(flt.states) if flt.states else _ALL_STATES  # a state given twice counts once
        if not (flt.group or flt.name):
            projects = [flt.project] if flt.project else sorted({p for p, _ in self._by_project})
            return [self._by_project[(p, s)] for p in projects for s in states if (p, s) in self._by_project]
        if flt.project:
            candidates: Iterable[Bucket] = self._project_buckets.get(flt.project, ())
        else:
            candidates = self._buckets.keys()
        return [self._buckets[b] for b in candidates if _bucket_matches(flt, b)]

    def _iter_sorted(self, flt: JobFilter, after: SortKey | None) -> tuple[Iterator[SortKey], int]:
        """Matching sort keys after ``after``, newest first, and the total count."""
        if not (flt.project or flt.group or flt.name or flt.states):
            start = 0 if after is None else self._order.bisect_right(after)
            return self._order.islice(start), len(self._order)
        lists = self._lists(flt)
        total = sum(map(len, lists))
        iters = []
        for lst in lists:
            start = 0 if after is None else lst.bisect_right(after)
            if start < len(lst):
                iters.append(lst.islice(start))
        return (iters[0] if len(iters) == 1 else heapq.merge(*iters)), total

    def page(self, flt: JobFilter, size: int, token: str, scope: str) -> tuple[list[RunEntry], bool, int]:
        """The runs of one page (newest first), whether more follow, and how many match in all."""
        limit = page_size(size)
        after = sort_key(decode_token(scope, flt.token_key(), token))
        it, total = self._iter_sorted(flt, after)
        entries = [self.runs[sk[1:]] for sk in itertools.islice(it, limit + 1)]  # type: ignore[index]
        return entries[:limit], len(entries) > limit, total

    def running(self, project: str) -> list[RunEntry]:
        flt = JobFilter(project=project, states=(S.JOB_STATE_RUNNING,))
        it, _ = self._iter_sorted(flt, None)
        return [self.runs[sk[1:]] for sk in it]  # type: ignore[index]

    def recent(self, project: str, since_ts: float, limit: int) -> list[RunEntry]:
        """Runs submitted since ``since_ts``, newest first, at most ``limit``."""
        it, _ = self._iter_sorted(JobFilter(project=project), None)
        out: list[RunEntry] = []
        for sk in it:
            if -sk[0] < since_ts or len(out) >= limit:
                break
            out.append(self.runs[sk[1:]])  # type: ignore[index]
        return out

    def _newest(self, ps: ProjectState) -> float:
        newest = self._activity[ps]
        if newest is None:
            newest = max(self.runs[sk[1:]].activity for sk in self._by_project[ps])  # type: ignore[index]
            self._activity[ps] = newest
        return newest

    def projects(self) -> list[tuple[str, int, Counter[int], float]]:
        by_project: dict[str, list[ProjectState]] = {}
        for ps in self._by_project:
            by_project.setdefault(ps[0], []).append(ps)
        out: list[tuple[str, int, Counter[int], float]] = []
        for project in sorted(by_project):
            counts: Counter[int] = Counter({ps[1]: len(self._by_project[ps]) for ps in by_project[project]})
            last = max(self._newest(ps) for ps in by_project[project])
            out.append((project, sum(counts.values()), counts, max(last, 0.0)))
        return out

    def failures_since(self, project: str, since_ts: float, limit: int) -> tuple[list[RunEntry], int]:
        """FAILED runs that ended at or after ``since_ts``: the newest ``limit`` (by end time, then
        list order), and how many there are."""
        failed = self._failed.get(project or _ALL)
        if failed is None:
            return [], 0
        count = failed.bisect_right((-since_ts, math.inf))
        return [self.runs[fk[2:]] for fk in failed.islice(0, min(limit, count))], count  # type: ignore[index]

    def project_state_counts(self, project: str) -> Counter[int]:
        if not project:
            return Counter(self.state_counts)
        return Counter({s: len(keys) for (p, s), keys in self._by_project.items() if p == project})

    # ------------------------------------------------------------ checkpoints

    def upsert_checkpoint(self, cf: CheckpointFile) -> None:
        self.remove_checkpoint(cf.key, cf.run_id, cf.suffix)
        self.checkpoints.setdefault(cf.key, {}).setdefault(cf.run_id, {})[cf.suffix] = cf
        bisect.insort(self._ckpt_order, _ckpt_sort(cf))
        self.checkpoint_bytes += cf.size_bytes
        self.checkpoint_count += 1
        self.changes += 1

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
        self.changes += 1

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


class Loader:
    """Fills an empty index from a cold scan as its parts arrive, then sorts once.

    ``add`` takes each part as it comes (from the scan's threads, one at a
    time, while the workers go on reading): the records and the counts are
    made then. ``finish`` sorts all runs once and deals the sorted keys out
    to the smaller lists, which so come out sorted. A run added twice (the
    share of a worker that failed, scanned again) keeps its last read.
    """

    def __init__(self, index: Index) -> None:
        self._index = index
        self._failed: dict[str, list[FailedKey]] = {}
        self._again = False

    def add(self, runs: Iterable[RunFile]) -> None:
        entries = self._index.runs
        for rf in runs:
            if rf.key in entries:
                self._again = True
            entry = entries[rf.key] = RunEntry(rf, rf.state not in FINAL_STATES)
            self._count(entry)

    def restore(self, entries: Iterable[RunEntry]) -> None:
        """Take records from a snapshot (``snapshot.py``), as ``add`` takes a scan's."""
        runs = self._index.runs
        for entry in entries:
            if entry.key in runs:
                self._again = True
            runs[entry.key] = entry
            self._count(entry)

    def _count(self, entry: RunEntry) -> None:
        index = self._index
        key, state = entry.key, entry.state
        if entry.job_id:
            index.by_id[entry.job_id] = key
        ps = (key[0], state)
        newest = index._activity.get(ps)
        if newest is None or entry.activity > newest:
            index._activity[ps] = entry.activity
        if state == S.JOB_STATE_FAILED:
            self._failed.setdefault(key[0], []).append(_failed_key(entry))
        index.state_counts[state] += 1

    def finish(self, checkpoints: list[CheckpointFile], problems: dict[str, str]) -> None:
        index = self._index
        if self._again:
            # Counted twice somewhere: count again from the records, each once.
            index.by_id.clear()
            index._activity.clear()
            index.state_counts.clear()
            self._failed, self._again = {}, False
            for entry in index.runs.values():
                self._count(entry)
        order = [e.sort for e in index.runs.values()]
        order.sort(key=_first)
        order.sort()  # nearly in order already: ties of time only
        by_project: dict[ProjectState, list[SortKey]] = {}
        buckets: dict[Bucket, list[SortKey]] = {}
        runs = index.runs
        for sk in order:
            state = runs[sk[1:]].state  # type: ignore[index]
            ps = (sk[1], state)
            keys = by_project.get(ps)
            if keys is None:
                keys = by_project[ps] = []
            keys.append(sk)
            bucket = (sk[1], sk[2], sk[3], state)
            keys = buckets.get(bucket)
            if keys is None:
                keys = buckets[bucket] = []
                index._project_buckets.setdefault(sk[1], set()).add(bucket)
            keys.append(sk)
        index._order = SortedList(order)
        index._by_project = {ps: SortedList(keys) for ps, keys in by_project.items()}
        index._buckets = {bucket: SortedList(keys) for bucket, keys in buckets.items()}
        index._failed = {project: _sorted_list(keys) for project, keys in self._failed.items()}
        if self._failed:
            index._failed[_ALL] = _sorted_list(list(itertools.chain.from_iterable(self._failed.values())))
        self._failed = {}
        for cf in checkpoints:
            index.checkpoints.setdefault(cf.key, {}).setdefault(cf.run_id, {})[cf.suffix] = cf
            index.checkpoint_bytes += cf.size_bytes
        index.checkpoint_count = len(checkpoints)
        index._ckpt_order = sorted(map(_ckpt_sort, checkpoints))
        index.problems = problems


def _sorted_list(keys: list[Any]) -> SortedList:
    """A SortedList of ``keys``, which begin with a float: sorted by it first (several times
    faster than comparing tuples), so the SortedList's own sort finds them nearly in order."""
    keys.sort(key=_first)
    return SortedList(keys)


def _first(key: tuple[Any, ...]) -> Any:
    return key[0]


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
