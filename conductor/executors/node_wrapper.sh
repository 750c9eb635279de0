#!/bin/sh
# Baton's wrapper for one step on an engine's node (Slurm, Ray): the same job
# on every engine, done once by Baton rather than each engine's own way.
#
#   node_wrapper.sh LAUNCH_DIR LOG_FILE DRAIN_SECONDS
#
# LAUNCH_DIR (in the run directory, on storage the nodes share with the
# conductor) holds `env`: the job's variables, exported, and baton_workdir /
# baton_command, not exported; it may hold secrets, so it is the owner's
# only (0600) and the job empties it once read. The wrapper
# - writes LAUNCH_DIR/started (the node and the time) once the job starts;
# - runs the job in a session of its own, its output appended straight to
#   LOG_FILE (the run's output.log), so no engine line is mixed in;
# - forwards requests written to LAUNCH_DIR/control ("SEQ SIGNAL", e.g. "1
#   TERM") to the job's process group, and to nothing else: neither engine
#   can signal only the job (Slurm's `scancel --full` signals every process of
#   the allocation, this wrapper included; Ray's stop kills 3 s later), and
#   a signal meant for the job must not end the wrapper that records it;
# - waits for the job, lets the rest of its group finish a checkpoint for up
#   to DRAIN_SECONDS after its leader died of a signal, kills what is left,
#   and writes the exit status (a code, or 128+N for signal N) to
#   LAUNCH_DIR/exit, renamed into place so it is never read half-written.
dir=$1
log=$2
drain=${3:-60}
shell=/bin/sh
[ -x /bin/bash ] && shell=/bin/bash

printf '%s %s\n' "$(hostname 2>/dev/null || echo unknown)" "$(date +%s)" >"$dir/started.tmp" &&
    mv -f "$dir/started.tmp" "$dir/started"
# Ended before it started (cancelled while the engine still queued it): the
# conductor wrote the exit record, and nothing may run now.
[ -s "$dir/exit" ] && exit 0

setsid /bin/sh -c 'echo $$ >"$1/job.pid"
. "$1/env" && : >"$1/env" && cd "$baton_workdir" && exec "$2" -c "$baton_command"' baton-job "$dir" "$shell" \
    </dev/null >>"$log" 2>&1 &
job=$!

# True while a live (not zombie) process is left in the job's group.
group_alive() {
    kill -0 "-$job" 2>/dev/null || return 1
    cat /proc/[0-9]*/stat 2>/dev/null |
        awk -v g="$job" '{ sub(/.*\) /, ""); if ($3 == g && $1 != "Z") { found = 1; exit } }
                         END { exit !found }'
}

# The request poller, and the job's guardian: a file on shared storage is the
# one channel every engine gives from the conductor to the node, and 50 ms
# keeps a request's delay below an engine's round trip, for a few forks a
# second. Requests wait until the job leads its group, so one made before the
# job started is delivered, not lost. The guardian ignores the engine's stop
# (Ray's SIGTERM to this process group): if that ends the wrapper, the job's
# own session would outlive it, so the guardian kills the job and records it.
wrapper=$$
(
    trap '' HUP INT TERM
    last=
    while :; do
        if [ -s "$dir/job.pid" ] && [ -s "$dir/control" ] && read -r seq sig <"$dir/control" &&
            [ "$seq" != "$last" ]; then
            last=$seq
            kill -s "$sig" -- "-$job" 2>/dev/null
            echo "$seq" >"$dir/control.ack"
        fi
        if ! kill -0 "$wrapper" 2>/dev/null; then
            kill -KILL -- "-$job" 2>/dev/null
            if [ ! -s "$dir/exit" ]; then
                echo 137 >"$dir/exit.tmp" && mv -f "$dir/exit.tmp" "$dir/exit"
            fi
            exit 0
        fi
        sleep 0.05
    done
) </dev/null >/dev/null 2>&1 &
poller=$!

wait "$job"
code=$?

if [ "$code" -gt 128 ]; then
    ticks=$((drain * 10))
    while [ "$ticks" -gt 0 ] && group_alive; do
        sleep 0.1
        ticks=$((ticks - 1))
    done
fi
kill -KILL "-$job" 2>/dev/null
kill "$poller" 2>/dev/null
echo "$code" >"$dir/exit.tmp"
mv -f "$dir/exit.tmp" "$dir/exit"
exit "$code"
