"""The facts about a real Slurm (Debian's 22.05) that a Baton Slurm executor relies on.

Each test runs real daemons (tools/testclusters/slurm.py), no mocks: sbatch,
squeue, scontrol and scancel against the session's single-node cluster, with
2 fake GPUs. What they show:

- ``sbatch --parsable`` prints the job id; ``--output`` is where the batch
  script's stdout and stderr go.
- squeue shows the job RUNNING within about a second: slurmctld schedules from a
  background loop that wakes once a second (batch_sched_delay=0 only stops it
  from waiting 3 more seconds).
- ``scontrol show job -o`` gives ``ExitCode=CODE:SIGNAL``: ``3:0`` and FAILED for
  a script that exits 3, ``0:9`` and FAILED for one killed by SIGKILL, ``0:0``
  and COMPLETED for a success. Ended jobs stay visible to scontrol for MinJobAge
  (300 s); sacct does not work (no slurmdbd).
- ``scancel --signal=TERM`` alone signals nothing in a batch job (it signals
  steps, and a plain batch job has none); ``--batch`` signals the batch shell
  only, not its children; ``--full`` signals the shell and every descendant.
  None of them ends the job.
- ``scancel`` sends SIGCONT and SIGTERM to all the job's processes, then SIGKILL
  after KillWait; the job is CANCELLED.
- ``scontrol suspend`` SIGSTOPs every process of the job (its CPU time stands
  still, squeue says SUSPENDED); ``scontrol resume`` SIGCONTs them.
- ``--gres=gpu:N`` sets CUDA_VISIBLE_DEVICES (and ROCR_VISIBLE_DEVICES,
  GPU_DEVICE_ORDINAL, SLURM_JOB_GPUS) to the GPUs' indexes; a job without it
  gets none of them.
- A request bigger than the node is refused by sbatch (exit 1), with
  EnforcePartLimits=ALL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tools.testclusters.slurm import DIR_PREFIX, SlurmCluster, SlurmError, sweep_stale

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(120)]

ENDED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
}
REPO = Path(__file__).resolve().parent.parent


def wait_until(what: str, check: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(interval)


def squeue_state(cluster: SlurmCluster, job: int) -> str:
    """The job's state as squeue shows it; "" once squeue no longer lists it."""
    return cluster.run("squeue", "-h", "-j", str(job), "-o", "%T", check=False).stdout.strip()


def wait_running(cluster: SlurmCluster, job: int, timeout: float = 10.0) -> None:
    wait_until(f"job {job} RUNNING", lambda: squeue_state(cluster, job) == "RUNNING", timeout)


def wait_ended(cluster: SlurmCluster, job: int, timeout: float = 15.0) -> dict[str, str]:
    info: dict[str, str] = {}

    def ended() -> bool:
        nonlocal info
        info = cluster.job(job)
        return info.get("JobState") in ENDED

    wait_until(f"job {job} ended", ended, timeout)
    return info


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_cluster_is_up_with_its_settings(slurm: SlurmCluster) -> None:
    node = slurm.run("scontrol", "show", "node", "-o", slurm.node).stdout
    assert "State=IDLE" in node
    assert f"CPUTot={slurm.cpus}" in node
    assert "Gres=gpu:2" in node
    part = slurm.run("sinfo", "-h", "-o", "%P %a").stdout.split()
    assert part == [f"{slurm.partition}*", "up"]
    assert slurm.env["SLURM_CONF"] == str(slurm.conf_path)
    assert slurm.startup_seconds < 15


def test_sbatch_runs_a_script_to_its_output_file(slurm: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    gate = tmp_path / "gate"
    path = script(
        tmp_path,
        "job.sh",
        f'echo "hello from $SLURM_JOB_ID on $SLURM_JOB_PARTITION"\necho oops >&2\n'
        f"while [ ! -e {gate} ]; do sleep 0.05; done\n",
    )
    job = slurm.sbatch(f"--output={out}", "--job-name=hello", str(path))
    wait_running(slurm, job)
    gate.touch()
    info = wait_ended(slurm, job)
    assert info["JobState"] == "COMPLETED"
    assert info["ExitCode"] == "0:0"
    assert info["StdOut"] == str(out)
    # stdout and stderr both go to --output when no --error is given.
    assert out.read_text() == f"hello from {job} on {slurm.partition}\noops\n"


def test_exit_code_and_signal_are_recorded(slurm: SlurmCluster, tmp_path: Path) -> None:
    exits = slurm.sbatch("--output=/dev/null", str(script(tmp_path, "exit3.sh", "exit 3\n")))
    killed = slurm.sbatch("--output=/dev/null", str(script(tmp_path, "kill9.sh", "sleep 0.2\nkill -9 $$\n")))
    termed = slurm.sbatch(
        "--output=/dev/null", str(script(tmp_path, "term.sh", "sleep 0.2\nkill -TERM $$\n"))
    )

    info = wait_ended(slurm, exits)
    assert (info["JobState"], info["ExitCode"], info["Reason"]) == ("FAILED", "3:0", "NonZeroExitCode")
    # A script killed by a signal: exit code 0, the signal after the colon. Slurm
    # 22.05 gives the Reason JobLaunchFailure for it, though the script ran.
    info = wait_ended(slurm, killed)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "0:9")
    info = wait_ended(slurm, termed)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "0:15")


SIGNAL_SCRIPT = """\
OUT=$1
bash -c "trap 'echo child >> $OUT' TERM; while :; do sleep 0.05; done" &
trap 'echo batch >> $OUT' TERM
echo ready >> $OUT
while :; do sleep 0.05; done
"""


@pytest.mark.parametrize(
    ("flags", "reached"),
    [
        ((), set()),  # signals steps only: a batch job has none
        (("--batch",), {"batch"}),  # the batch shell, not its children
        (("--full",), {"batch", "child"}),  # the batch shell and all its descendants
        (("--batch", "--full"), {"batch", "child"}),
    ],
    ids=["plain", "batch", "full", "batch+full"],
)
def test_scancel_signal_reaches_without_ending_the_job(
    slurm: SlurmCluster, tmp_path: Path, flags: tuple[str, ...], reached: set[str]
) -> None:
    out = tmp_path / "signals.txt"
    job = slurm.sbatch("--output=/dev/null", str(script(tmp_path, "sig.sh", SIGNAL_SCRIPT)), str(out))
    wait_running(slurm, job)
    wait_until("ready", lambda: out.exists() and "ready" in out.read_text())
    slurm.run("scancel", "--signal=TERM", *flags, str(job))
    time.sleep(0.6)  # the traps run between two 50 ms sleeps
    assert set(out.read_text().split()) - {"ready"} == reached
    assert squeue_state(slurm, job) == "RUNNING"


def test_scancel_terms_every_process_then_kills_after_killwait(slurm: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "signals.txt"
    # Both processes ignore SIGTERM (they note it): only the SIGKILL ends them.
    job = slurm.sbatch("--output=/dev/null", str(script(tmp_path, "sig.sh", SIGNAL_SCRIPT)), str(out))
    wait_running(slurm, job)
    wait_until("ready", lambda: out.exists() and "ready" in out.read_text())
    t0 = time.monotonic()
    slurm.run("scancel", str(job))
    wait_until("SIGTERM seen", lambda: {"batch", "child"} <= set(out.read_text().split()), timeout=5)
    assert squeue_state(slurm, job) == "COMPLETING"
    info = wait_ended(slurm, job, timeout=int(slurm.settings()["KillWait"]) + 10)
    elapsed = time.monotonic() - t0
    assert (info["JobState"], info["ExitCode"]) == ("CANCELLED", "0:9")
    assert elapsed >= int(slurm.settings()["KillWait"]) - 0.5


def test_scancel_ends_a_job_that_obeys_sigterm(slurm: SlurmCluster, tmp_path: Path) -> None:
    job = slurm.sbatch("--output=/dev/null", "--wrap=exec sleep 300")
    wait_running(slurm, job)
    t0 = time.monotonic()
    slurm.run("scancel", str(job))
    info = wait_ended(slurm, job, timeout=5)
    assert info["JobState"] == "CANCELLED"
    assert time.monotonic() - t0 < 3
    # Once ended, squeue lists it as CANCELLED until MinJobAge, or not at all.
    assert squeue_state(slurm, job) in ("", "CANCELLED")


def test_suspend_stops_cpu_time_and_resume_restarts_it(slurm: SlurmCluster, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    busy = script(tmp_path, "busy.sh", f"echo $$ > {pidfile}\nwhile :; do :; done\n")
    job = slurm.sbatch("--output=/dev/null", str(busy))
    wait_running(slurm, job)
    wait_until("pid written", lambda: pidfile.exists() and pidfile.read_text().strip())
    pid = int(pidfile.read_text())
    wait_until("busy", lambda: cpu_ticks(pid) > 0)

    slurm.run("scontrol", "suspend", str(job))
    assert squeue_state(slurm, job) == "SUSPENDED"
    wait_until("stopped", lambda: proc_state(pid) == "T", timeout=5)
    before = cpu_ticks(pid)
    time.sleep(0.5)
    assert cpu_ticks(pid) == before
    assert slurm.job(job)["JobState"] == "SUSPENDED"

    slurm.run("scontrol", "resume", str(job))
    assert squeue_state(slurm, job) == "RUNNING"
    wait_until("running again", lambda: cpu_ticks(pid) > before + 5, timeout=5)


def test_cpus_mem_time_and_gpu_requests_are_accepted(slurm: SlurmCluster, tmp_path: Path) -> None:
    env_out = tmp_path / "env.json"
    dump = f"{sys.executable} -c 'import json, os; print(json.dumps(dict(os.environ)))' > {env_out}"
    job = slurm.sbatch(
        "--output=/dev/null",
        f"--cpus-per-task={slurm.cpus}",
        "--mem=512M",
        "--time=00:02:00",
        "--gres=gpu:1",
        f"--wrap={dump}",
    )
    info = wait_ended(slurm, job)
    assert info["JobState"] == "COMPLETED"
    assert info["NumCPUs"] == str(slurm.cpus)
    assert info["MinMemoryNode"] == "512M"
    assert info["TimeLimit"] == "00:02:00"
    assert info["TresPerNode"] == "gres:gpu:1"
    env = json.loads(env_out.read_text())
    assert env["SLURM_CPUS_PER_TASK"] == str(slurm.cpus)
    assert env["SLURM_MEM_PER_NODE"] == "512"
    # The GPU's index (0 or 1), in the variables CUDA, ROCm and Slurm read.
    assert env["CUDA_VISIBLE_DEVICES"] in ("0", "1")
    assert env["ROCR_VISIBLE_DEVICES"] == env["GPU_DEVICE_ORDINAL"] == env["CUDA_VISIBLE_DEVICES"]
    assert env["SLURM_GPUS_ON_NODE"] == "1"

    both = slurm.sbatch("--output=/dev/null", "--gres=gpu:2", f"--wrap={dump}")
    wait_ended(slurm, both)
    assert json.loads(env_out.read_text())["CUDA_VISIBLE_DEVICES"] == "0,1"

    none = slurm.sbatch("--output=/dev/null", f"--wrap={dump}")
    wait_ended(slurm, none)
    env = json.loads(env_out.read_text())
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert "SLURM_GPUS_ON_NODE" not in env


@pytest.mark.parametrize(
    ("request_args", "error"),
    [
        (lambda c: [f"--cpus-per-task={c.cpus + 1}"], "More processors requested than permitted"),
        (lambda c: [f"--mem={c.memory_mb + 1}"], "Memory specification can not be satisfied"),
        (lambda c: ["--gres=gpu:3"], "Requested node configuration is not available"),
        (lambda c: ["--nodes=2"], "Node count specification invalid"),
    ],
    ids=["cpus", "mem", "gpus", "nodes"],
)
def test_more_than_the_node_has_is_refused_at_sbatch(
    slurm: SlurmCluster, request_args: Callable[[SlurmCluster], list[str]], error: str
) -> None:
    proc = slurm.run("sbatch", "--parsable", *request_args(slurm), "--wrap=true", check=False)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert error in proc.stderr
    assert "sbatch: error: Batch job submission failed:" in proc.stderr


def test_stop_kills_every_process_and_removes_the_directory(slurm: SlurmCluster, tmp_path: Path) -> None:
    # A second cluster beside the session's: its own ports, name and munge.
    other = SlurmCluster(gpus=0).start()
    try:
        assert other.cluster_name != slurm.cluster_name
        assert {other.ctld_port, other.slurmd_port}.isdisjoint({slurm.ctld_port, slurm.slurmd_port})
        pidfile = tmp_path / "pid"
        job = other.sbatch("--output=/dev/null", f"--wrap=echo $$ > {pidfile}; exec sleep 300")
        wait_running(other, job)
        wait_until("pid written", lambda: pidfile.exists() and pidfile.read_text().strip())
        job_pid = int(pidfile.read_text())
        daemons = [p.pid for p in other._procs.values()]
    finally:
        other.stop()
    assert not other.dir.exists()
    for pid in [job_pid, *daemons]:
        assert not _alive(pid), pid
    with pytest.raises(SlurmError):
        other.run("squeue")


def _alive(pid: int) -> bool:
    try:
        return proc_state(pid) != "Z"
    except OSError:
        return False


OWNER = """\
import sys, time
from tools.testclusters.slurm import SlurmCluster
c = SlurmCluster(gpus=0, base=sys.argv[1]).start()
job = c.sbatch("--output=/dev/null", "--wrap=exec sleep 300")
while c.run("squeue", "-h", "-j", str(job), "-o", "%T").stdout.strip() != "RUNNING":
    time.sleep(0.02)
print(c.dir, " ".join(str(p.pid) for p in c._procs.values()), flush=True)
time.sleep(300)
"""


def test_a_killed_owner_leaves_nothing_after_the_next_start(tmp_path: Path) -> None:
    """The owner is SIGKILLed: its daemons die with it (PDEATHSIG); the slurmstepd and
    job it left are killed, and its directory removed, by the next sweep."""
    base = Path(f"/tmp/bsw{os.getpid()}")
    base.mkdir(exist_ok=True)
    try:
        owner = subprocess.Popen(
            [sys.executable, "-c", OWNER, str(base)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert owner.stdout is not None
            line = owner.stdout.readline().split()
            assert line, "the owner did not start its cluster"
        finally:
            owner.send_signal(signal.SIGKILL)
            owner.wait()
        directory, daemons = line[0], [int(p) for p in line[1:]]
        wait_until("daemons dead", lambda: not any(_alive(p) for p in daemons), timeout=10)
        left = [p for p in os.listdir("/proc") if p.isdigit() and _marked_by(int(p), directory)]
        assert left, "expected the job's slurmstepd to outlive its slurmd"

        assert sweep_stale(base) == [Path(directory)]
        assert not Path(directory).exists()
        wait_until("stepd dead", lambda: not any(_alive(int(p)) for p in left), timeout=5)
    finally:
        for d in base.glob(f"{DIR_PREFIX}*"):
            sweep_stale(base)
            assert not d.exists()
        base.rmdir()


def _marked_by(pid: int, directory: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"BATON_SLURM_DIR={directory}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def test_bare_benchmark_measures_on_the_cluster(slurm: SlurmCluster) -> None:
    from bench.slurm_bare import measure

    result = measure(slurm, jobs=2)
    figures = result["figures"]
    for name in (
        "sbatch_to_running_p50",
        "sbatch_to_running_p95",
        "scancel_to_gone_p50",
        "scancel_to_gone_p95",
    ):
        assert figures[name]["unit"] == "ms"
        assert figures[name]["samples"] == 2
        assert 0 < figures[name]["value"] < 30_000
    assert result["details"]["poll_interval_ms"] == 5.0
