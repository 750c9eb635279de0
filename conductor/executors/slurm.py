"""The Slurm executor (``executor: slurm``): each step is one Slurm batch job.

It drives the cluster with Slurm's own tools from PATH (``sbatch``,
``squeue``, ``scontrol``, ``scancel``, ``sacct``), configured by the
environment (``SLURM_CONF``), never with a protocol of its own. The batch
script is Baton's node wrapper (``nodes.py``), so the job's output lands in
the run's ``output.log`` and its exit status in the launch directory, both
on storage the nodes share with the conductor.

- Resources map to ``--cpus-per-task``, ``--mem`` and ``--gres=gpu:N``; a
  ``max_duration`` also becomes ``--time``, a backstop behind Baton's own timer.
- Requests: terminate and request-checkpoint go to the wrapper, which signals
  only the job's process group (``scancel --signal --full`` would signal the
  wrapper too); kill, at the end of Baton's grace, is the wrapper's SIGKILL
  and then Slurm's own ``scancel``. Suspend is the wrapper's SIGSTOP to the
  job, then ``scontrol suspend``; resume the reverse.
- A launch is submitted under a name known before it is submitted
  (``--job-name=baton-JOB-SEQ``), so a restarted conductor finds a submission
  whose id it never learned, and never submits it twice.
- Exit codes come from the wrapper's record; when a job ended without one
  (cancelled by Slurm, a lost node), from ``scontrol show job`` while Slurm
  remembers the job, then from ``sacct`` where accounting exists.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from pathlib import Path

import structlog

from baton.conductor.executors.base import ExitStatus, Handle, LaunchError, LaunchSpec
from baton.conductor.executors.nodes import EngineState, EngineView, NodeExecutor
from baton.v1 import job_pb2

log = structlog.get_logger(__name__)

# squeue/scontrol states, by what they mean to Baton.
_QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"}
_SUSPENDED = {"SUSPENDED", "STOPPED"}
COMMAND_TIMEOUT = 30.0
MAX_STDERR_CHARS = 500


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class SlurmExecutor(NodeExecutor):
    name = "slurm"
    pause_modes = frozenset({job_pb2.PAUSE_MODE_SUSPEND, job_pb2.PAUSE_MODE_CHECKPOINT})
    health_fields = frozenset({"pid", "alive", "uptime", "stopped"})
    queues = True

    def __init__(self, partition: str = "", account: str = "") -> None:
        super().__init__()
        self.partition = partition
        self.account = account

    async def _run(self, *argv: str) -> CommandResult:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.base_env,
            )
        except OSError as exc:
            why = f"cannot run {argv[0]}: {exc.strerror} (is Slurm installed and on PATH?)"
            raise LaunchError(why) from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return CommandResult(124, "", f"{argv[0]} did not answer in {COMMAND_TIMEOUT:.0f} s")
        # stderr ends up in a job's reason or an error: its end says why, and a
        # chatty tool must not fill either.
        stderr = err.decode(errors="replace").strip()[-MAX_STDERR_CHARS:]
        return CommandResult(proc.returncode or 0, out.decode(errors="replace"), stderr)

    # ------------------------------------------------------------ engine side

    def sbatch_args(self, handle: Handle, spec: LaunchSpec) -> list[str]:
        """The sbatch options for one launch (its resources, limits and names)."""
        launch_dir = Path(handle.data["dir"])
        args = [
            "--parsable",
            f"--job-name={self.engine_name(handle)}",
            f"--output={launch_dir / 'slurm.out'}",
            f"--chdir={launch_dir}",
            "--export=ALL",
        ]
        if self.partition:
            args.append(f"--partition={self.partition}")
        if self.account:
            args.append(f"--account={self.account}")
        res = spec.resources
        if res.cpus > 0:
            args.append(f"--cpus-per-task={math.ceil(res.cpus)}")
        if res.memory_bytes > 0:
            args.append(f"--mem={math.ceil(res.memory_bytes / 2**20)}M")
        if res.gpus > 0:
            args.append(f"--gres=gpu:{res.gpus}")
        if spec.time_limit_seconds > 0:
            args.append(f"--time={math.ceil(spec.time_limit_seconds / 60)}")
        return args

    async def submit(self, handle: Handle, spec: LaunchSpec, command: list[str]) -> str:
        # sbatch takes the script itself (it travels to the node with the job).
        script_and_args = command[1:]
        done = await self._run("sbatch", *self.sbatch_args(handle, spec), *script_and_args)
        job_id = done.stdout.strip().split(";")[0]
        if done.returncode != 0 or not job_id.isdigit():
            raise LaunchError(f"sbatch refused the job: {done.stderr.strip() or done.stdout.strip()}")
        return job_id

    async def find(self, handle: Handle) -> str | None:
        done = await self._run("squeue", "-h", "-t", "all", f"--name={self.engine_name(handle)}", "-o", "%i")
        ids = [line.strip() for line in done.stdout.splitlines() if line.strip().isdigit()]
        return ids[0] if ids else None

    async def view(self, handle: Handle) -> EngineView:
        job_id = handle.external_id
        done = await self._run("scontrol", "show", "job", "-o", job_id)
        if done.returncode == 0 and "JobState=" in done.stdout:
            fields = _fields(done.stdout)
            return _view(fields.get("JobState", ""), fields.get("ExitCode", ""), fields.get("Reason", ""))
        # Forgotten by slurmctld (MinJobAge): accounting may still know it.
        acct = await self._run("sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State,ExitCode")
        lines = [line for line in acct.stdout.splitlines() if "|" in line]
        if acct.returncode == 0 and lines:
            state, exit_code = lines[0].split("|")[:2]
            return _view(state.split()[0], exit_code, "")
        return EngineView(EngineState.UNKNOWN, detail=f"Slurm no longer knows job {job_id}")

    async def cancel(self, handle: Handle) -> None:
        if handle.external_id:
            await self._run("scancel", handle.external_id)


    async def suspend(self, handle: Handle) -> None:
        # The job leads a session of its own, which Slurm's process tracking
        # may not follow (proctrack/linuxproc did not stop it here): the
        # wrapper stops the job's group first, then Slurm suspends the
        # allocation and gives its CPUs to others.
        await self._request(handle, "STOP")
        await self._acked(handle)
        done = await self._run("scontrol", "suspend", handle.external_id)
        if done.returncode != 0:
            raise LaunchError(f"scontrol suspend {handle.external_id}: {done.stderr.strip()}")

    async def resume(self, handle: Handle) -> None:
        # Slurm first: the wrapper's poller is stopped with the allocation.
        done = await self._run("scontrol", "resume", handle.external_id)
        if done.returncode != 0 and "not suspended" not in done.stderr.lower():
            raise LaunchError(f"scontrol resume {handle.external_id}: {done.stderr.strip()}")
        await self._request(handle, "CONT")


    async def kill_all(self, job_id: str) -> None:
        prefix = f"baton-{job_id}-"
        done = await self._run("squeue", "-h", "-o", "%i %j")
        for line in done.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].startswith(prefix):
                await self._run("scancel", "--full", "--signal=KILL", parts[0])
                await self._run("scancel", parts[0])


def _fields(line: str) -> dict[str, str]:
    """``Key=Value`` pairs of one ``scontrol show -o`` line (values have no spaces we need)."""
    out: dict[str, str] = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep and key not in out:
            out[key] = value
    return out


def _view(state: str, exit_code: str, reason: str) -> EngineView:
    state = state.upper().rstrip("+")
    if state in _QUEUED:
        return EngineView(EngineState.QUEUED, detail=reason)
    if state in _RUNNING:
        return EngineView(EngineState.RUNNING)
    if state in _SUSPENDED:
        return EngineView(EngineState.SUSPENDED)
    # Ended: COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY...
    return EngineView(EngineState.ENDED, status=_slurm_exit(exit_code, state), detail=state)


def _slurm_exit(exit_code: str, state: str) -> ExitStatus | None:
    """Slurm's ``CODE:SIGNAL`` for the batch script, as an ExitStatus."""
    code_text, _, signal_text = exit_code.partition(":")
    if not code_text.isdigit():
        return None
    code, signum = int(code_text), int(signal_text or 0)
    detail = f"ended {state} in Slurm without Baton's exit record"
    if signum:
        return ExitStatus(exit_code=128 + signum, signal=signum, detail=detail)
    return ExitStatus(exit_code=code, detail=detail)
