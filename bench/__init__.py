"""``make bench``: Baton's benchmark, against a real conductor subprocess.

Run it as ``python -m bench [--quick] [--only NAME[,NAME]]``. It prints one JSON
document on stdout (progress goes to stderr). Every figure carries its unit and
sample count, and the figures with a target from the issues carry the target
and a pass flag beside them.

Sections (names for ``--only``):

- ``submit_to_running_ms``: SubmitJob sent to the job seen RUNNING (GetJob polling).
- ``cancel_ms``: CancelJob sent to CANCELLED, for a job that obeys SIGTERM; then
  many running jobs cancelled at once.
- ``submissions_per_second``: acknowledged SubmitJob calls per second, sustained,
  from many concurrent grpc.aio submitters (the jobs stay QUEUED); also how
  soon after the last call every job's status.json is on disk, and the one
  client process's CPU (near a whole core, the client would be the limit).
- ``memory_per_running_job_mb``: PSS that Baton adds per running job (conductor
  growth plus the job's supervisor shell).
- ``memory_maximal_jobs_mb``: conductor RSS growth with eight running jobs at
  every size limit (1 MiB specs, env at its caps), listed, fetched and watched.
- ``getjob_ratio``: GetJob calls per second against the conductor, beside a
  bare grpc.aio server measured in the same run with the same client.
- ``pause_resume_ms``: pause and resume latency in both pause modes.
- ``web``: through ``baton gateway`` (a real ``baton up``): a job's log line to
  its server-sent event received by an aiohttp client (beside a gRPC follower
  of the same job), and a PauseJob/ResumeJob to the dashboard's runs table
  showing the new state in headless Chromium (bench/web.py; Chromium from
  tools/browser.sh, the DOM figures are left out without it).
- ``ray_bare_ms``: the bare Ray Jobs REST API (no Baton), on a Ray head of its
  own: submit to RUNNING and stop to STOPPED (``python -m bench.ray_bare``).
- ``executors_ms``: Baton's engine executors beside the bare engines, per engine
  (Slurm and Ray, each on a cluster / head of its own, in the same run): submit
  to RUNNING (SubmitJob to the WatchJobs event RUNNING with an empty reason,
  i.e. the wrapper started on a node; also to the first RUNNING event and to
  the engine's id) and cancel to CANCELLED, beside sbatch-to-RUNNING (squeue)
  and scancel-to-gone, or the Ray Jobs API's submit-to-RUNNING and
  stop-to-STOPPED, and beside each bare job's own command started; bare and
  Baton jobs alternate, Slurm's at matched phases of its once-a-second
  scheduling tick. Overheads (Baton p50 minus bare p50) carry issue 14's
  target, at most max(10% of the bare p50, 20 ms). At least 10 jobs per engine
  even with ``--quick``; an engine that is not installed is reported as such
  (bench/executors.py).
- ``slurm_bare`` (only with ``--only``: it needs Slurm, see tools/engines.sh):
  bare Slurm's sbatch-to-RUNNING and scancel-to-gone, no Baton involved
  (bench/slurm_bare.py; also ``python -m bench.slurm_bare``).

``--scale`` runs one section instead of all these, ``history_scale``
(bench/scale.py): issue 18's figures for a long history. A history of ended
jobs (``--scale-jobs``, a million by default) is generated straight into a
conductor's registry and trees (bench/history.py, checked against the API by
tests/test_historygen.py), live jobs are submitted through the API
(``--scale-live``), and the conductor's memory, restart, ListJobs with every
filter and WatchJobs snapshots under 32 GetJob caller processes,
GetConductorInfo, ClearJobs, and a viewer's start, memory and inotify watches
over the same tree are measured, each phase within ``--scale-phase-limit``.
A million jobs take about 20 GB on disk and a long while: try
``--scale-jobs 100000`` first.

``--skip NAME[,NAME]`` leaves sections out (the smoke test skips
``executors_ms``, which takes minutes).

Every section starts its own conductor on 127.0.0.1:0 with a fresh temporary
home, and leaves no job, process or directory behind. Each section also says
how busy the machine was meanwhile (CPU used by other programs), because on a
small shared machine that moves every figure.
"""
