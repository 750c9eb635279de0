#!/bin/sh
# The local executor's supervisor for one launch: it outlives the conductor,
# records the job's exit status, and leaves no process of the job behind.
#
#   local_shim.sh LAUNCH_DIR LOG_FILE DRAIN_SECONDS
#
# LAUNCH_DIR/env defines the job's variables (exported, so only the job's own
# processes carry them) and baton_workdir / baton_command (not exported). The
# job empties it once read: it may hold secrets, which live on in no file.
#
# Three processes:
# - this supervisor: drains and kills what is left of the job, then writes
#   LAUNCH_DIR/exit;
# - a recorder, the job's parent: it waits for the job and writes its status
#   to LAUNCH_DIR/job.exit, so the status survives the loss of this
#   supervisor (kill -9, the OOM killer), when the conductor adopts the job;
# - the job, in a session of its own, so its process group is its own: pause
#   and cancel signals go to the whole group and reach neither this shim nor
#   the recorder, which therefore trap nothing and can lose no signal. The
#   job writes its pid to LAUNCH_DIR/job.pid once it leads its group; the
#   conductor waits for that before it reports the launch.
dir=$1
log=$2
drain=${3:-60}
# bash runs the command where there is one: it execs a lone command, so the
# job's own program leads its group and takes its signals first hand.
shell=/bin/sh
[ -x /bin/bash ] && shell=/bin/bash
# The recorder's own stderr goes nowhere, so its note on how the job died
# ("Terminated") stays out of the job's log; the job takes the log back.
/bin/sh -c 'exec 3>&2 2>/dev/null
setsid /bin/sh -c '"'"'exec 2>&3 3>&-; echo $$ >"$1/job.pid"
. "$1/env" && : >"$1/env" && cd "$baton_workdir" && exec "$2" -c "$baton_command"'"'"' baton-job "$1" "$2"
code=$?
echo "$code" >"$1/job.exit"
exit "$code"' baton-recorder "$dir" "$shell" </dev/null >>"$log" 2>&1 &
recorder=$!
echo "$$ $recorder" >"$dir/pids"
# The conductor reads the recorder's pid from our stdout, then we let go of it.
echo "$recorder"
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

wait "$recorder"
code=$?
job=$(cat "$dir/job.pid" 2>/dev/null)
if [ -n "$job" ] && [ ! -s "$dir/job.exit" ] && kill -0 "$job" 2>/dev/null; then
    # The recorder ended before the job it waits for: it was lost (kill -9,
    # the OOM killer). Watch the job to its end; how it ended is not known.
    while group_alive; do
        sleep 0.5
    done
    code=unknown
elif [ -n "$job" ]; then
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
fi
# Into files made at launch, so a disk out of inodes cannot keep the status
# out; a rename keeps a half-written status from ever being read as final.
echo "$code" >"$dir/exit.tmp"
mv -f "$dir/exit.tmp" "$dir/exit"
# And in our own exit status, for a conductor that is still our parent (when
# the disk has no room even for those few bytes).
[ "$code" = unknown ] && exit 255
exit "$code"
