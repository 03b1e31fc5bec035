# shellcheck shell=bash
# Sourced by benches/run.sh: stopping what the run started (by pid), PostgreSQL's user,
# free ports, and the EXIT trap that stops every server and removes the temp dir.

stop_pid() { # pid [signal]
  local p=$1 sig=${2:-TERM}
  [ -n "$p" ] || return 0
  kill -0 "$p" 2>/dev/null || return 0
  kill "-$sig" "$p" 2>/dev/null || true
  for _ in $(seq 1 300); do
    kill -0 "$p" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
  { wait "$p"; } 2>/dev/null || true
}
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null || {
      echo "$p"
      return
    }
  done
}
# cleanup: the EXIT trap (run.sh sets it): kills every server still in PID, Redis and
# PostgreSQL, removes TMP unless KEEP_TMP=1 or the run failed.
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for n in "${!PID[@]}"; do stop_pid "${PID[$n]}" KILL; done
  stop_pid "$REDIS_PID" KILL
  # The cluster phase's NATS servers and nodes (restarted nodes are not in PID).
  if [ -n "${CLUSTER_DIR:-}" ]; then bash "$REPO/scripts/cluster.sh" down "$CLUSTER_DIR" >/dev/null 2>&1 || true; fi
  if [ -n "$PG_DATA" ]; then as_pg "$PGBIN/pg_ctl" -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true; fi
  if [ "$KEEP_TMP" = 1 ] || [ "$rc" -ne 0 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
