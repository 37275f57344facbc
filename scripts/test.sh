#!/bin/sh
# The suite on both cores: the slow tests (deployments of processes, timed outages and storms)
# one after another in one pytest process, everything else beside it on two xdist workers
# (light tests, mostly waiting on the databases), so that the heavy tests never load the
# machine twice over. pytest-xdist's `--dist loadgroup`
# was meant to do this, but under pytest 9 its groups have no effect (it renames node ids,
# which pytest no longer reads back), and the heavy tests ran side by side.
set -u
BIN=${BIN:-.venv/bin}
slow_log=$(mktemp)
"$BIN/pytest" -m slow -p no:cacheprovider >"$slow_log" 2>&1 &
slow_pid=$!
"$BIN/pytest" -m "not slow" -n 2
fast=$?
wait "$slow_pid"
slow=$?
echo "---------------------------------- slow tests ----------------------------------"
cat "$slow_log"
rm -f "$slow_log"
[ "$fast" -eq 0 ] && [ "$slow" -eq 0 ]
