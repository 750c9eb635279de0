"""A generator of realistic viewer trees: runs in every state, logs, checkpoints.

    <root>/status/<project>/<group>/<name>/<run_id>/status.json, output.log
    <root>/checkpoints/<project>/<group>/<name>/<run_id>/.baton-run      a run's checkpoints
    <root>/checkpoints/<project>/<group>/<name>/<run_id>/<suffix>/model.bin, config.*, job.json, ...
    <root>/checkpoints/<project>/<group>/<name>/<suffix>/...             the plain layout

``generate(root, runs=N, checkpoints=M, seed=S, now=T)`` writes the tree and
returns a ``Manifest`` (counts and interesting samples for tests to pick
from). The same seed and ``now`` give byte-identical files, and the same
checkpoint directory mtimes (a checkpoint's create time). Some jobs keep
their checkpoints in the plain layout, some in their runs' directories, some
both; runs of one job share some suffixes, as resumed runs of one training
script do (a bare suffix is then ambiguous). status.json is a
``baton.v1.Job`` in the canonical proto3 JSON mapping (what
``json_format.MessageToJson`` writes, compact), so the viewer can be checked
field by field against the file.

Times are placed with margins so tests are not at the mercy of the clock: a
RUNNING run's heartbeat is either fresh (at most ``FRESH_HEARTBEAT_MAX`` seconds
old) or stale by an age inside one of ``STALE_BANDS``, far from 300 s and from
``STALE_SPLIT`` (which a test can use as a ``stale_after`` override).

Also runnable: ``python -m tests.treegen DIR --runs N --checkpoints M --seed S``
(the benchmark uses it at 100,000 runs and 20,000 checkpoints).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATES = (
    "JOB_STATE_QUEUED",
    "JOB_STATE_RUNNING",
    "JOB_STATE_PAUSING",
    "JOB_STATE_PAUSED",
    "JOB_STATE_CANCELLING",
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_FAILED",
    "JOB_STATE_CANCELLED",
)
STATE_WEIGHTS = (8, 16, 3, 6, 3, 40, 16, 8)
FINAL_STATES = frozenset({"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"})
# A fresh heartbeat is at most this old when written; stale ones fall inside a band.
FRESH_HEARTBEAT_MAX = 60.0
STALE_BANDS = ((420.0, 1500.0), (2500.0, 30000.0))
# A stale_after between the two bands splits the stale runs in two, with margins.
STALE_SPLIT = 2000.0
# The states split by whether a run may still change, with their weights (for ``live_share``).
_WEIGHTED = list(zip(STATES, STATE_WEIGHTS, strict=True))
_LIVE = [s for s, _ in _WEIGHTED if s not in FINAL_STATES], [w for s, w in _WEIGHTED if s not in FINAL_STATES]
_ENDED = [s for s, _ in _WEIGHTED if s in FINAL_STATES], [w for s, w in _WEIGHTED if s in FINAL_STATES]
# Share of runs placed in the last 24 hours (the rest over the two weeks before).
RECENT_SHARE = 0.45

PROJECTS = (
    "vision", "nlp", "speech", "rl", "infra", "robotics", "genomics", "search",
    "ads.ranking", "weather", "chem", "audio-gen", "recsys", "forecast", "ocr", "maps",
)  # fmt: skip
GROUPS = (
    "baseline", "sweep-lr", "ablation", "prod", "nightly", "dev.alice", "exp_42", "v2",
    "hparam-3", "bob", "release-1.4", "scratch",
)  # fmt: skip
NAMES = (
    "train", "eval", "preprocess", "export", "finetune", "distill", "bench", "sample",
    "tokenize", "index-build", "score_v2", "pack.shards",
)  # fmt: skip
LOG_WORDS = ("loss", "acc", "lr", "grad_norm", "tokens/s", "val_loss", "mem", "eta")


@dataclass
class Manifest:
    """What was written: counts, and samples of each interesting kind, for tests."""

    root: Path
    status_dir: Path
    checkpoints_dir: Path
    now: float
    seed: int
    runs: int = 0
    checkpoints: int = 0
    in_progress_checkpoints: int = 0
    state_counts: Counter[str] = field(default_factory=Counter)
    log_bytes: int = 0
    checkpoint_bytes: int = 0
    # Run keys (project, group, name, run_id) by kind.
    fresh_running: list[tuple[str, str, str, str]] = field(default_factory=list)
    stale_running: list[tuple[str, str, str, str]] = field(default_factory=list)
    without_id: list[tuple[str, str, str, str]] = field(default_factory=list)
    big_logs: list[tuple[str, str, str, str]] = field(default_factory=list)
    without_log: list[tuple[str, str, str, str]] = field(default_factory=list)
    # Checkpoint keys (project, group, name, run_id, suffix) by kind; run_id is "" in the plain layout.
    both_configs: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    no_config: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    no_job_spec: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    nested: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    in_runs: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    # Suffixes that more than one checkpoint of a job has: (project, group, name, suffix).
    shared_suffixes: list[tuple[str, str, str, str]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "runs": self.runs,
            "checkpoints": self.checkpoints,
            "in_progress_checkpoints": self.in_progress_checkpoints,
            "checkpoints_in_runs": len(self.in_runs),
            "shared_suffixes": len(self.shared_suffixes),
            "state_counts": dict(sorted(self.state_counts.items())),
            "log_bytes": self.log_bytes,
            "checkpoint_bytes": self.checkpoint_bytes,
            "fresh_running": len(self.fresh_running),
            "stale_running": len(self.stale_running),
        }


# ---------------------------------------------------------------- timestamps


def format_ts(us: int) -> str:
    """A proto3-JSON timestamp from microseconds since the epoch, as protobuf writes it."""
    secs, frac = divmod(us, 1_000_000)
    y, mo, d, h, mi, se = time.gmtime(secs)[:6]
    text = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{se:02d}"
    if frac == 0:
        return text + "Z"
    if frac % 1000 == 0:
        return f"{text}.{frac // 1000:03d}Z"
    return f"{text}.{frac:06d}Z"


def _quantize(us: int, grain: int) -> int:
    return us - us % grain


# ---------------------------------------------------------------------- runs


@dataclass
class _Times:
    create: int
    start: int = 0
    end: int = 0
    heartbeat: int = 0
    stale: bool | None = None  # for RUNNING: whether the heartbeat is stale


def _seconds(rng: random.Random, low: float, high: float) -> int:
    return int(rng.uniform(low, high) * 1_000_000)


def _pick_times(rng: random.Random, state: str, now: int) -> _Times:
    """Times consistent with ``state``: create <= start <= heartbeat <= end <= now."""
    recent = rng.random() < RECENT_SHARE
    if state == "JOB_STATE_QUEUED":
        create = now - (_seconds(rng, 5, 86000) if recent else _seconds(rng, 86400 + 3600, 14 * 86400))
        return _Times(create)
    if state in ("JOB_STATE_RUNNING", "JOB_STATE_PAUSING", "JOB_STATE_CANCELLING"):
        stale = state == "JOB_STATE_RUNNING" and rng.random() < 0.3
        if stale:
            band = STALE_BANDS[rng.randrange(len(STALE_BANDS))]
            heartbeat = now - _seconds(rng, *band)
        else:
            heartbeat = now - _seconds(rng, 0, FRESH_HEARTBEAT_MAX - 10)
        start = heartbeat - (_seconds(rng, 0, 20000) if recent else _seconds(rng, 86400, 5 * 86400))
        create = start - _seconds(rng, 0.05, 300)
        return _Times(create, start, 0, heartbeat, stale)
    if state == "JOB_STATE_PAUSED":
        heartbeat = now - (_seconds(rng, 60, 40000) if recent else _seconds(rng, 86400, 6 * 86400))
        start = heartbeat - _seconds(rng, 1, 40000)
        return _Times(start - _seconds(rng, 0.05, 300), start, 0, heartbeat)
    # Terminal.
    # Ended runs keep 5 minutes away from the 24-hour line ("recent failures"), on both sides.
    end = now - (_seconds(rng, 1, 86400 - 300) if recent else _seconds(rng, 86400 + 300, 14 * 86400))
    start = end - _seconds(rng, 0.5, 2 * 86400)
    heartbeat = max(start, end - _seconds(rng, 0, 30))
    create = start - _seconds(rng, 0.05, 600)
    return _Times(create, start, end, heartbeat)


def _job_keys(rng: random.Random, runs: int) -> list[tuple[str, str, str]]:
    n_projects = max(3, min(len(PROJECTS), round(runs**0.3)))
    keys: list[tuple[str, str, str]] = []
    for project in PROJECTS[:n_projects]:
        groups = rng.sample(GROUPS, rng.randint(2, min(len(GROUPS), max(2, round(runs**0.22)))))
        for group in sorted(groups):
            names = rng.sample(NAMES, rng.randint(1, min(len(NAMES), max(2, round(runs**0.2)))))
            keys.extend((project, group, name) for name in sorted(names))
    return keys


def _spec(rng: random.Random, project: str, group: str, name: str, steps: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "project": project,
        "group": group,
        "executor": "local",
        "pause": {"grace": "30s", "signal": rng.choice(("SIGTERM", "SIGUSR1"))},
    }
    if steps > 1:
        spec["steps"] = [
            {"name": f"s{i}", "command": f"python {name}.py --stage {i}"} for i in range(1, steps + 1)
        ]
    else:
        spec["command"] = f"python {name}.py --lr {rng.choice(('1e-3', '3e-4', '1e-4'))}"
    if rng.random() < 0.5:
        spec["resources"] = {
            "cpus": rng.choice((0.5, 1.0, 2.0, 8.0)),
            "memoryBytes": str(rng.choice((1, 4, 16)) << 30),
        }
        if rng.random() < 0.3:
            spec["resources"]["gpus"] = rng.choice((1, 2, 8))
    if rng.random() < 0.3:
        spec["env"] = {"SEED": str(rng.randrange(1000)), "WANDB_MODE": "offline"}
    if rng.random() < 0.2:
        spec["maxDuration"] = f"{rng.choice((3600, 7200, 86400))}s"
    if rng.random() < 0.2:
        spec["retries"] = rng.randint(1, 3)
    return spec


def _job(
    rng: random.Random,
    key: tuple[str, str, str, str],
    state: str,
    t: _Times,
    status_root: str,
    ckpt_root: str,
    with_id: bool,
) -> dict[str, Any]:
    """The canonical proto3 JSON of one Job (default values left out, as protobuf does)."""
    project, group, name, run_id = key
    steps = rng.choice((1, 1, 1, 2, 3))
    job: dict[str, Any] = {
        "project": project,
        "group": group,
        "name": name,
        "runId": run_id,
        "state": state,
        "spec": _spec(rng, project, group, name, steps),
        "executor": "local",
        "createTime": format_ts(t.create),
        "updateTime": format_ts(max(t.create, t.start, t.heartbeat, t.end)),
        "revision": str(rng.randint(1, 10_000_000)),
        "runDir": f"{status_root}/{project}/{group}/{name}/{run_id}",
        "checkpointDir": f"{ckpt_root}/{project}/{group}/{name}",
        "startStep": 1,
        "stepCount": steps,
    }
    if with_id:
        job["id"] = run_id
    if t.start:
        step = rng.randint(1, steps)
        job["startTime"] = format_ts(t.start)
        job["step"] = step
        job["stepName"] = "main" if steps == 1 else f"s{step}"
        job["attempt"] = rng.choice((1, 1, 1, 2))
        job["externalId"] = str(rng.randint(300, 4_000_000))
    if t.heartbeat:
        job["heartbeatTime"] = format_ts(t.heartbeat)
    if t.end:
        job["endTime"] = format_ts(t.end)
    if state == "JOB_STATE_SUCCEEDED":
        job["exitCode"] = 0
        job["reason"] = "succeeded"
    elif state == "JOB_STATE_FAILED":
        if rng.random() < 0.2:
            job["signal"] = 9
            job["reason"] = "failed: killed by signal 9"
        else:
            code = rng.choice((1, 1, 1, 2, 3, 137, 255))
            job["exitCode"] = code
            job["reason"] = f"failed: exit code {code}"
    elif state == "JOB_STATE_CANCELLED":
        if rng.random() < 0.5:
            job["signal"] = 15
        else:
            job["exitCode"] = 143
        job["reason"] = rng.choice(("cancelled by request", "cancelled: max_duration 7200s exceeded"))
    elif state in ("JOB_STATE_PAUSED", "JOB_STATE_PAUSING"):
        job["pauseMode"] = rng.choice(("PAUSE_MODE_SUSPEND", "PAUSE_MODE_CHECKPOINT"))
        job["reason"] = "paused by request"
    elif state == "JOB_STATE_CANCELLING":
        job["reason"] = "cancelling by request"
    return job


def _log_pool(rng: random.Random) -> list[bytes]:
    lines: list[bytes] = []
    for i in range(4096):
        roll = rng.random()
        if roll < 0.02:
            # Progress bars write carriage returns; some programs write bytes that are not UTF-8.
            lines.append(f"progress {i % 100:3d}%\r".encode() + b"\xff\xfe\x00 raw\n")
        elif roll < 0.05:
            lines.append(b"\n")
        else:
            word = LOG_WORDS[i % len(LOG_WORDS)]
            lines.append(f"step {i:6d} {word}={rng.random():.6f} epoch={i // 512}\n".encode())
    return lines


def _log_lines(rng: random.Random, scale: float) -> int:
    roll = rng.random()
    if roll < 0.88:
        n = rng.randint(0, 20)
    elif roll < 0.996:
        n = rng.randint(21, 120)
    else:
        n = rng.randint(1500, 3000)  # bigger than one 64 KiB chunk
    return max(0, int(n * scale))


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def job_bytes(job: dict[str, Any]) -> bytes:
    """status.json bytes of a Job dict (sorted keys, compact)."""
    return json.dumps(job, sort_keys=True, separators=(",", ":")).encode()


def write_status(run_dir: Path, job: dict[str, Any]) -> None:
    """Replace ``run_dir/status.json`` atomically (temp name, then rename), as writers must."""
    tmp = run_dir / f".status.json.{os.getpid()}.tmp"
    _write(str(tmp), job_bytes(job))
    os.replace(tmp, run_dir / "status.json")


# --------------------------------------------------------------- checkpoints

_CONFIG_KINDS = ("yaml", "yaml", "yaml", "yaml", "json", "json", "json", "both", "both", "none")


def _config(rng: random.Random, name: str, fmt: str) -> dict[str, Any]:
    return {
        "format": fmt,
        "model": {"name": name, "layers": rng.choice((6, 12, 24)), "dropout": rng.choice((0.0, 0.1))},
        "optimizer": {"lr": rng.choice((0.001, 0.0003)), "betas": [0.9, 0.999]},
        "steps": rng.randint(100, 100_000),
        "tags": rng.sample(["fp16", "ema", "amp", "cosine", "warmup"], 2),
        "resume": rng.random() < 0.5,
        "notes": None if rng.random() < 0.5 else "ok: yes",
    }


def _yaml(data: Any, indent: int = 0) -> str:
    """A tiny YAML writer for the plain values used here (keeps PyYAML out of the generator)."""
    pad = "  " * indent
    out: list[str] = []
    for k, v in data.items():
        if isinstance(v, dict):
            out.append(f"{pad}{k}:\n{_yaml(v, indent + 1)}")
        elif isinstance(v, list):
            out.append(f"{pad}{k}:\n" + "".join(f"{pad}  - {json.dumps(x)}\n" for x in v))
        else:
            out.append(f"{pad}{k}: {json.dumps(v)}\n")
    return "".join(out)


RUN_MARKER = ".baton-run"
# Where a job's checkpoints go; the first three jobs get one kind each.
_CKPT_LAYOUTS = ("plain", "runs", "both")


def _make_run_dir(path: Path, run_id: str) -> None:
    """A run's checkpoint directory with its marker, as the conductor makes it."""
    path.mkdir()
    marker = {"job_id": run_id, "run_id": run_id}
    _write(str(path / RUN_MARKER), json.dumps(marker, sort_keys=True).encode() + b"\n")


def _write_checkpoint(
    rng: random.Random,
    blob: bytes,
    path: Path,
    key: tuple[str, str, str],
    mtime_ns: int,
    big: bool,
    kind: str,
) -> tuple[int, str, bool, bool]:
    """Write one checkpoint directory; (bytes, config kind, has job.json, nested)."""
    os.mkdir(path)
    total = 0
    size = rng.randint(20_000, 60_000) if big else rng.randint(64, 4096)
    start = rng.randrange(len(blob) - size)
    files: list[tuple[str, bytes]] = [("model.bin", blob[start : start + size])]
    if rng.random() < 0.5:
        files.append(("optimizer.bin", blob[: rng.randint(0, 2048)]))
    if kind in ("yaml", "both"):
        files.append(("config.yaml", _yaml(_config(rng, key[2], "yaml")).encode()))
    if kind in ("json", "both"):
        files.append(("config.json", json.dumps(_config(rng, key[2], "json"), indent=2).encode()))
    has_spec = rng.random() < 0.85
    if has_spec:
        spec = _spec(rng, key[0], key[1], key[2], 1)
        files.append(("job.json", json.dumps(spec, sort_keys=True).encode()))
    nested = rng.random() < 0.1
    if nested:
        os.mkdir(path / "shards")
        os.mkdir(path / "shards" / "rank0")
        files.append(("shards/rank0/part-0.bin", blob[: rng.randint(1, 3000)]))
        files.append(("shards/part-1.bin", blob[-rng.randint(1, 3000) :]))
        files.append(("shards/empty", b""))
    for rel, data in files:
        _write(str(path / rel), data)
        total += len(data)
    if nested:
        os.utime(path / "shards", ns=(mtime_ns, mtime_ns))
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return total, kind, has_spec, nested


# ------------------------------------------------------------------ generate


def generate(
    root: Path,
    runs: int,
    checkpoints: int,
    *,
    seed: int = 0,
    now: float | None = None,
    log_scale: float = 1.0,
    live_share: float | None = None,
) -> Manifest:
    """Write ``runs`` runs and ``checkpoints`` checkpoints under ``root``; see the module doc.

    ``live_share``: the share of runs in a state that is not final (a long
    history is nearly all ended runs); by default, about a third are, as in
    a busy day's tree. The first eight runs take one state each either way.
    """
    now = time.time() if now is None else now
    root = Path(root)
    status_dir = root / "status"
    ckpt_dir = root / "checkpoints"
    status_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    now_us = int(now * 1_000_000)
    m = Manifest(root, status_dir, ckpt_dir, now, seed)
    keys = _job_keys(rng, runs)
    # Skewed: the first keys get most runs, as real projects do.
    weights = [1.0 / (i + 1) ** 0.7 for i in range(len(keys))]
    cum: list[float] = []
    acc = 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    pool = _log_pool(rng)
    pool += pool  # so any slice of up to len(pool) lines is contiguous
    status_root, ckpt_root = str(status_dir), str(ckpt_dir)
    made_dirs: set[tuple[str, str, str]] = set()
    runs_of: dict[tuple[str, str, str], list[str]] = {}
    run_ids: set[str] = set()
    prev: tuple[str, _Times] | None = None
    for i in range(runs):
        jk = keys[i % len(keys)] if i < len(keys) else rng.choices(keys, cum_weights=cum)[0]
        if prev is not None and i >= len(STATES) and rng.random() < 0.05:
            # Launched together with the previous run: the very same times (a tie to break by name).
            state, t = prev
        else:
            if i < len(STATES):
                state = STATES[i]
            elif live_share is None:
                state = rng.choices(STATES, STATE_WEIGHTS)[0]
            else:
                state = rng.choices(*(_LIVE if rng.random() < live_share else _ENDED))[0]
            t = _pick_times(rng, state, now_us)
            grain = rng.choice((1_000_000, 1000, 1, 1, 1))
            t = _Times(
                _quantize(t.create, grain),
                _quantize(t.start, grain),
                _quantize(t.end, grain),
                _quantize(t.heartbeat, grain),
                t.stale,
            )
            t.start = max(t.start, t.create) if t.start else 0
            t.heartbeat = max(t.heartbeat, t.start) if t.heartbeat else 0
            t.end = max(t.end, t.heartbeat, t.start) if t.end else 0
        prev = (state, t)
        with_id = rng.random() >= 0.02
        if with_id:
            y, mo, d, h, mi, se = time.gmtime(t.create // 1_000_000)[:6]
            stamp = f"{y:04d}{mo:02d}{d:02d}-{h:02d}{mi:02d}{se:02d}"
            run_id = f"{stamp}-{rng.getrandbits(24):06x}"
            while run_id in run_ids:
                run_id = f"{stamp}-{rng.getrandbits(24):06x}"
        else:
            # Written by some other program: its own run names, no job id.
            run_id = f"{rng.choice(('manual', 'r', 'adhoc.run', 'x_'))}{i:05d}"
        run_ids.add(run_id)
        runs_of.setdefault(jk, []).append(run_id)
        key = (*jk, run_id)
        parent = f"{status_root}/{jk[0]}/{jk[1]}/{jk[2]}"
        if jk not in made_dirs:
            os.makedirs(parent, exist_ok=True)
            made_dirs.add(jk)
        run_dir = f"{parent}/{run_id}"
        os.mkdir(run_dir)
        job = _job(rng, key, state, t, status_root, ckpt_root, with_id)
        _write(f"{run_dir}/status.json", job_bytes(job))
        m.runs += 1
        m.state_counts[state] += 1
        if not with_id:
            m.without_id.append(key)
        if state == "JOB_STATE_RUNNING":
            (m.stale_running if t.stale else m.fresh_running).append(key)
        if state == "JOB_STATE_QUEUED" or rng.random() < 0.03:
            m.without_log.append(key)
            continue
        n = _log_lines(rng, log_scale)
        if i in (1, 5):
            n = max(n, 2000)  # one RUNNING and one SUCCEEDED run with logs over 64 KiB
        start = rng.randrange(len(pool) // 2)
        data = f"[baton] {run_id} starting {jk[2]}\n".encode() + b"".join(pool[start : start + n])
        if state not in FINAL_STATES and rng.random() < 0.3:
            data += b"partial line without newline"
        _write(f"{run_dir}/output.log", data)
        m.log_bytes += len(data)
        if len(data) > 64 * 1024:
            m.big_logs.append(key)

    blob = rng.randbytes(1 << 17)
    ckpt_keys = rng.sample(keys, max(1, min(len(keys), checkpoints // 4 or 1)))
    layouts = {jk: _CKPT_LAYOUTS[i] if i < 3 else rng.choice(_CKPT_LAYOUTS) for i, jk in enumerate(ckpt_keys)}
    ckpt_made: set[tuple[str, str, str]] = set()
    counters: Counter[tuple[str, str, str]] = Counter()
    # Per job: the suffixes written so far, by run ("" for the plain layout).
    suffixes_of: dict[tuple[str, str, str], dict[str, list[str]]] = {}
    run_dirs: dict[Path, int] = {}
    prev_mtime = 0
    for i in range(checkpoints):
        jk = ckpt_keys[i % len(ckpt_keys)] if i < len(ckpt_keys) else rng.choice(ckpt_keys)
        base = ckpt_dir.joinpath(*jk)
        if jk not in ckpt_made:
            base.mkdir(parents=True, exist_ok=True)
            ckpt_made.add(jk)
        counters[jk] += 1
        suffix = f"step-{counters[jk] * rng.randint(1, 500):07d}-{i:x}"
        layout = layouts[jk]
        in_run = layout == "runs" or (layout == "both" and rng.random() < 0.6)
        # A few runs per job, the ids of its runs in the status tree when it has some.
        run_id = rng.choice((runs_of.get(jk) or [f"run-{i:05d}"])[:3]) if in_run else ""
        written = suffixes_of.setdefault(jk, {})
        others = sorted(
            {s for r, done in written.items() if r != run_id for s in done} - set(written.get(run_id, ()))
        )
        if others and rng.random() < 0.25:
            # Resumed or restarted from the same step as another run: the same suffix.
            suffix = rng.choice(others)
            m.shared_suffixes.append((*jk, suffix))
        written.setdefault(run_id, []).append(suffix)
        holder = base
        if run_id:
            holder = base / run_id
            if not holder.exists():
                _make_run_dir(holder, run_id)
        if prev_mtime and rng.random() < 0.05:
            mtime_ns = prev_mtime  # saved in the same microsecond as another one
        else:
            mtime_ns = (now_us - _seconds(rng, 30, 10 * 86400)) * 1000
        prev_mtime = mtime_ns
        if run_id:
            run_dirs[holder] = max(run_dirs.get(holder, 0), mtime_ns)
        # The first four have one config kind each, so even a small tree has them all.
        kind = ("yaml", "json", "both", "none")[i] if i < 4 else rng.choice(_CONFIG_KINDS)
        size, kind, has_spec, nested = _write_checkpoint(
            rng, blob, holder / suffix, jk, mtime_ns, big=rng.random() < 0.03, kind=kind
        )
        ck = (*jk, run_id, suffix)
        m.checkpoints += 1
        m.checkpoint_bytes += size
        if run_id:
            m.in_runs.append(ck)
        if kind == "both":
            m.both_configs.append(ck)
        elif kind == "none":
            m.no_config.append(ck)
        if not has_spec:
            m.no_job_spec.append(ck)
        if nested:
            m.nested.append(ck)
        if rng.random() < 0.08:
            # One being written next to it: skipped by readers until renamed.
            partial = holder / rng.choice((f".{suffix}-next", f"{suffix}-next.tmp"))
            os.mkdir(partial)
            _write(str(partial / "model.bin"), blob[:1000])
            m.in_progress_checkpoints += 1
    # A run's directory changes with each checkpoint made in it: give it a time
    # of its own, so the same seed makes the same tree.
    for path, mtime_ns in run_dirs.items():
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return m


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.treegen", description=__doc__.split("\n")[0])
    p.add_argument("dir", type=Path, help="root: writes DIR/status and DIR/checkpoints")
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--checkpoints", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--now", type=float, help="seconds since the epoch the times are relative to")
    p.add_argument("--log-scale", type=float, default=1.0, help="multiply log lengths by this")
    p.add_argument("--live-share", type=float, help="share of runs not ended (default: about a third)")
    args = p.parse_args(argv)
    if args.dir.exists() and any(args.dir.iterdir()):
        print(f"{args.dir} is not empty", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    m = generate(
        args.dir,
        args.runs,
        args.checkpoints,
        seed=args.seed,
        now=args.now,
        log_scale=args.log_scale,
        live_share=args.live_share,
    )
    print(json.dumps({**m.summary(), "seconds": round(time.perf_counter() - t0, 2)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
