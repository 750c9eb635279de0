#!/bin/sh
# The local executor's supervisor for one launch: it outlives the conductor,
# records the job's exit status, and leaves no process of the job behind.
#
#   local_shim.sh LAUNCH_DIR LOG_FILE
#
# LAUNCH_DIR/env defines the job's variables (exported, so only the job's own
# processes carry them) and baton_workdir / baton_command (not exported).
# The job runs in a new session, so its process group is its own: pause and
# cancel signals go to the whole group and never reach this shim.
dir=$1
log=$2
setsid /bin/sh -c '. "$1/env" && cd "$baton_workdir" && exec /bin/sh -c "$baton_command"' \
    baton-job "$dir" </dev/null >>"$log" 2>&1 &
job=$!
echo "$$ $job" >"$dir/pids"
# The conductor reads the job's pid from our stdout, then we let go of it.
echo "$job"
exec >/dev/null
wait "$job"
code=$?
# The leader is gone: nothing of the job may outlive it.
kill -KILL "-$job" 2>/dev/null
echo "$code" >"$dir/exit.tmp"
# A rename keeps a half-written status from ever being read as final.
mv -f "$dir/exit.tmp" "$dir/exit"
