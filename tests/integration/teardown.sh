#!/usr/bin/env bash
# Stop the daemons tests/integration/setup.sh started, by PID, newest first.
W=${W:?set W to the setup work directory}
[ -f "$W/pids.txt" ] || exit 0
tac "$W/pids.txt" | while read -r name pid; do
  kill "$pid" 2>/dev/null && echo "[teardown] stopped $name ($pid)" >&2
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
done
: > "$W/pids.txt"
