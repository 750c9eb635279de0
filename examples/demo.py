"""``make demo``: the whole of Baton in half a minute, checked.

It starts ``baton up`` (conductor and viewer in one process, on free loopback
ports, with a temporary home), submits ``examples/train.yaml`` (a job that
trains a toy model for 200 steps and checkpoints as it goes), follows its log
through the Python client, pauses it with a checkpoint, resumes it, lets it
finish, shows it and its checkpoints through the viewer with the ``baton``
command's own tables, and stops the services.

It exits 0 only if all of that really happened: the states were right, the
pause wrote a checkpoint and the resumed run started from it, and the model's
final value equals that of a run that was never paused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from rich.console import Console
from rich.text import Text

from baton.client import FINAL_STATES, ConductorClient, ViewerClient
from baton.client.output import job_line
from baton.client.specfile import read_spec
from baton.v1 import job_pb2

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "examples" / "train.yaml"
PAUSE_AT_STEP = 50
# Everything here takes about half a minute; past this something is stuck.
WAIT = 60.0

console = Console(highlight=False, soft_wrap=True)


class DemoFailed(Exception):
    """A check did not hold."""


class Checks:
    """What the demo promises, each checked and reported."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def check(self, ok: bool, what: str, detail: str = "") -> None:
        mark = Text("  ✔ ", style="green") if ok else Text("  ✘ ", style="bold red")
        console.print(mark + Text(what) + Text(f"  {detail}" if detail else "", style="dim"))
        if not ok:
            self.failed.append(what)

    def require(self, ok: bool, what: str, detail: str = "") -> None:
        """A check the rest of the demo depends on."""
        self.check(ok, what, detail)
        if not ok:
            raise DemoFailed(what)


def say(title: str) -> None:
    console.print()
    console.print(Text(f"▶ {title}", style="bold cyan"))


def baton(*args: str, env: dict[str, str]) -> str:
    """Run the ``baton`` command and show what it printed."""
    console.print(Text(f"$ baton {' '.join(args)}", style="bold"))
    done = subprocess.run(
        [sys.executable, "-m", "baton.client.cli", *args], env=env, cwd=REPO, capture_output=True, text=True
    )
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    sys.stdout.flush()
    if done.returncode != 0:
        raise DemoFailed(f"`baton {' '.join(args)}` exited with {done.returncode}")
    return done.stdout


def unpaused_result(spec_text: str, scratch: Path) -> str:
    """The final value of the same training run never paused (run here, at full speed)."""
    spec = yaml.safe_load(spec_text)
    run_dir = scratch / "unpaused"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env |= {"BATON_RUN_DIR": str(run_dir), "BATON_CHECKPOINT_DIR": str(run_dir / "checkpoints")}
    subprocess.run(
        f"{spec['command']} --interval 0 --every 0",
        shell=True, cwd=spec.get("workdir") or REPO, env=env, check=True, capture_output=True,
    )  # fmt: skip
    return (run_dir / "result.txt").read_text().strip()


def start_services(scratch: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    address_file = scratch / "addresses.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    command = [
        sys.executable, "-m", "baton.client.cli", "up", "--home", str(scratch / "home"),
        "--listen", "127.0.0.1:0", "--viewer-listen", "127.0.0.1:0", "--gateway-listen", "127.0.0.1:0",
        "--address-file", str(address_file),
    ]  # fmt: skip
    shown = "$ baton up --listen 127.0.0.1:0 --viewer-listen 127.0.0.1:0 --gateway-listen 127.0.0.1:0"
    console.print(Text(shown, style="bold"))
    proc = subprocess.Popen(command, cwd=REPO, env=env)

    # `baton up` writes the file (atomically) once both services serve.
    for _ in range(600):
        if proc.poll() is not None:
            raise DemoFailed(f"`baton up` exited with {proc.returncode}")
        if address_file.exists():
            return proc, dict(json.loads(address_file.read_text()))
        time.sleep(0.05)
    proc.kill()
    raise DemoFailed("`baton up` did not serve within 30 s")


def stop_services(proc: subprocess.Popen[bytes], checks: Checks) -> None:
    say("Stopping the services (Ctrl-C)")
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    checks.check(code == 0, "baton up stopped cleanly", f"exit status {code}")


def follow_and_steer(
    conductor: ConductorClient, job: job_pb2.Job, checks: Checks, env: dict[str, str]
) -> tuple[str, job_pb2.LogChunk | None]:
    """Follow the log to the end; pause at PAUSE_AT_STEP, show the pause, resume. The whole log."""
    log = bytearray()
    pending = b""
    paused = False
    stream = conductor.stream_logs(job.id, follow=True)
    for chunk in stream:
        log += chunk.data
        pending += chunk.data
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace")
            step = re.match(r"step=(\d+) ", line)
            if not step or int(step.group(1)) % 20 == 0:
                console.print(Text(f"  │ {line}", style="dim"))
            if step and int(step.group(1)) == PAUSE_AT_STEP and not paused:
                paused = True
                pause_and_resume(conductor, job, checks, env)
    return log.decode(errors="replace"), stream.result


def pause_and_resume(
    conductor: ConductorClient, job: job_pb2.Job, checks: Checks, env: dict[str, str]
) -> None:
    say(f"Pausing it with a checkpoint at step {PAUSE_AT_STEP}")
    pausing = conductor.pause_job(job.id, job_pb2.PAUSE_MODE_CHECKPOINT)
    console.print(job_line(pausing, "asked"))
    paused = conductor.wait_for_job(job.id, states=FINAL_STATES | {job_pb2.JOB_STATE_PAUSED}, timeout=WAIT)
    checks.require(paused.state == job_pb2.JOB_STATE_PAUSED, "the job is PAUSED", job_line(paused).plain)
    health = conductor.get_job_health(job.id)
    checks.check(
        paused.pause_mode == job_pb2.PAUSE_MODE_CHECKPOINT and not health.has_process,
        "…with a checkpoint: no process of it is left",
        health.detail,
    )
    baton("checkpoints", "--project", job.project, "--name", job.name, env=env)
    say("Resuming it")
    resumed = conductor.resume_job(job.id)
    console.print(job_line(resumed, "resumed"))
    checks.check(resumed.state in (job_pb2.JOB_STATE_RUNNING, job_pb2.JOB_STATE_QUEUED), "the job runs again")


def demo(scratch: Path, checks: Checks) -> None:
    say("Starting conductor, viewer and gateway together: baton up")
    proc, addresses = start_services(scratch)
    try:
        console.print(f"  conductor {addresses['conductor']}   viewer {addresses['viewer']}")
        console.print(f"  dashboard http://{addresses['gateway']}/")
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
        env |= {"BATON_CONDUCTOR": addresses["conductor"], "BATON_VIEWER": addresses["viewer"]}
        with (
            ConductorClient(addresses["conductor"]) as conductor,
            ViewerClient(addresses["viewer"]) as viewer,
        ):
            job_id = run_job(conductor, viewer, checks, env, scratch)
        show_over_http(addresses["gateway"], job_id, checks)
    finally:
        stop_services(proc, checks)


def show_over_http(gateway: str, job_id: str, checks: Checks) -> None:
    say("Asking the gateway over plain HTTP (what curl or the dashboard sees)")
    url = f"http://{gateway}/v1/jobs/{job_id}"
    console.print(Text(f"$ curl {url}", style="bold"))
    with urllib.request.urlopen(url, timeout=10) as answer:
        job = json.loads(answer.read())
    console.print(f"  {job['name']}: {job['state']}")
    checks.check(job["state"] == "JOB_STATE_SUCCEEDED", "the gateway answers with the same job, in JSON")
    events_url = f"http://{gateway}/v1/jobs/{job_id}/logs?tail_lines=1&follow=true"
    request = urllib.request.Request(events_url, headers={"Accept": "text/event-stream"})
    with urllib.request.urlopen(request, timeout=10) as stream:
        text = stream.read().decode()
    checks.check("event: end" in text, "its log follows as server-sent events, ending with `end`")


def run_job(
    conductor: ConductorClient, viewer: ViewerClient, checks: Checks, env: dict[str, str], scratch: Path
) -> str:
    spec_text = read_spec(str(SPEC))
    say(f"Submitting {SPEC.relative_to(REPO)} and following its log (every 20th step shown)")
    job = conductor.submit_job(spec_text)
    console.print(job_line(job, "submitted"))
    log, end = follow_and_steer(conductor, job, checks, env)

    say("Checking what happened")
    checks.require(end is not None, "the followed log ended with its `complete` message")
    assert end is not None
    final = conductor.get_job(job.id)
    checks.check(
        end.state == job_pb2.JOB_STATE_SUCCEEDED and end.exit_code == 0,
        "the job SUCCEEDED with exit code 0",
        job_line(final).plain,
    )
    paused_at = re.search(r"^paused at step=(\d+)$", log, re.M)
    resumed = re.search(r"^resumed from (\S+) at step=(\d+) ", log, re.M)
    checks.require(paused_at is not None, "the job saved a checkpoint when asked to pause")
    checks.require(resumed is not None, "the resumed run started from a checkpoint")
    assert paused_at is not None and resumed is not None
    checkpoint = resumed.group(1)
    checks.check(
        resumed.group(2) == paused_at.group(1),
        "…the one the pause wrote",
        f"paused at step {paused_at.group(1)}, resumed at step {resumed.group(2)}",
    )
    checks.check(final.resume_dir == checkpoint, "the job records where it resumed from", checkpoint)
    checks.check(Path(checkpoint, "state.json").is_file(), "that checkpoint is on disk")
    expected = unpaused_result(spec_text, scratch)
    got = (Path(final.run_dir) / "result.txt").read_text().strip()
    checks.check(got == expected, "its result equals an unpaused run's", f"{got} == {expected}")

    say("Asking the viewer (read-only, from the status and checkpoint directories)")
    # The viewer's own log stream ends once its index has seen the run end.
    read_back = b"".join(chunk.data for chunk in viewer.stream_logs(job.id, follow=True))
    checks.check(read_back.decode(errors="replace") == log, "the viewer serves the same log")
    checks.check(viewer.get_job(job.id).state == job_pb2.JOB_STATE_SUCCEEDED, "the viewer has it SUCCEEDED")
    baton("get", job.id, "--from", "viewer", env=env)
    baton("checkpoints", "--project", job.project, "--name", job.name, env=env)
    listed = {cp.suffix for cp in viewer.iter_checkpoints(project=job.project, name=job.name)}
    checks.check(
        Path(checkpoint).name in listed, "the viewer lists the pause's checkpoint", Path(checkpoint).name
    )
    baton("stats", env=env)
    return job.id


def main() -> int:
    started = time.monotonic()
    checks = Checks()
    scratch = Path(tempfile.mkdtemp(prefix="baton-demo-"))
    try:
        demo(scratch, checks)
    except DemoFailed as exc:
        checks.failed.append(str(exc))
        console.print(Text(f"demo failed: {exc}", style="bold red"))
    except Exception as exc:
        checks.failed.append(repr(exc))
        console.print_exception()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    took = time.monotonic() - started
    console.print()
    if checks.failed:
        console.print(Text(f"✘ demo FAILED after {took:.0f} s: {'; '.join(checks.failed)}", style="bold red"))
        return 1
    console.print(Text(f"✔ demo passed in {took:.0f} s", style="bold green"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
