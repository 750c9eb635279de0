#!/bin/sh
# The local executor's supervisor for one launch: it outlives the conductor,
# records the job's exit status, and leaves no process of the job behind.
#
#   local_shim.sh LAUNCH_DIR LOG_FILE DRAIN_SECONDS
#
# LAUNCH_DIR/env defines the job's variables (exported, so only the job's own
# processes carry them) and baton_workdir / baton_command (not exported).
# The job runs in a new session, so its process group is its own: pause and
# cancel signals go to the whole group and never reach this shim.
dir=$1
log=$2
drain=${3:-60}
# bash runs the command where there is one: it execs a lone command, so no
# further shell stands between the leader and the job's own program.
shell=/bin/sh
[ -x /bin/bash ] && shell=/bin/bash
#
# In front of the job sits one small shell, the leader of the job's group: it
# records the job's own exit status in LAUNCH_DIR/job.exit, so the status is
# known even when this supervisor is lost (kill -9, the OOM killer) and the
# conductor adopts the group. It traps the signals a pause or cancel sends, so
# it outlives them and records what they did; a trap (unlike an ignore) is
# reset in the job, which takes each signal first hand. Its own stderr goes
# nowhere, so its note on how the job died ("Terminated") stays out of the
# job's log; the job gets the log back as its stderr once forked. The record
# is one write of a few bytes by a builtin (the job's PATH may hold no mv).
setsid /bin/sh -c '. "$1/env" && cd "$baton_workdir" || exit 127
trap : HUP INT QUIT ABRT USR1 USR2 ALRM TERM
exec 3>&2 2>/dev/null
/bin/sh -c '"'"'exec 2>&3 3>&-; exec "$0" -c "$1"'"'"' "$2" "$baton_command"
code=$?
echo "$code" >"$1/job.exit"
exit "$code"' baton-job "$dir" "$shell" </dev/null >>"$log" 2>&1 &
job=$!
echo "$$ $job" >"$dir/pids"
# The conductor reads the job's pid from our stdout, then we let go of it.
echo "$job"
exec >/dev/null

# True while a live (not zombie) process is left in the job's group. Orphaned
# zombies may never be reaped on some machines, so `kill -0` alone cannot
# tell; it does rule out the common case cheaply (no member at all).
group_alive() {
    kill -0 "-$job" 2>/dev/null || return 1
    cat /proc/[0-9]*/stat 2>/dev/null |
        awk -v g="$job" '{ sub(/.*\) /, ""); if ($3 == g && $1 != "Z") { found = 1; exit } }
                         END { exit !found }'
}

wait "$job"
code=$?
if [ "$code" -gt 128 ]; then
    # The leader died of a signal (a pause or a cancel): often it is only the
    # shell in front of the real work, which is still saving a checkpoint.
    # Give the rest of the group until it is done; the conductor kills it at
    # the end of the grace period, and DRAIN_SECONDS bounds this without it.
    ticks=$((drain * 10))
    while [ "$ticks" -gt 0 ] && group_alive; do
        sleep 0.1
        ticks=$((ticks - 1))
    done
fi
# The job is over: nothing of it may outlive it.
kill -KILL "-$job" 2>/dev/null
echo "$code" >"$dir/exit.tmp"
# A rename keeps a half-written status from ever being read as final.
mv -f "$dir/exit.tmp" "$dir/exit"
