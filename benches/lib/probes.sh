# shellcheck shell=bash
# Sourced by benches/run.sh: the machine probes written into the report's "Machine" table
# (at the start and the end of a run).

# fsync_probe DIR: ms per 4 KiB O_DSYNC write (what one group commit costs at least).
fsync_probe() {
  dd if=/dev/zero of="$1/dsync.probe" bs=4k count=300 oflag=dsync 2>&1 |
    awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s,") printf "%.2f", $(i - 1) * 1000 / 300 }'
  rm -f "$1/dsync.probe"
}
# stall_probe: CPU time taken from a thread spinning on the server core, alone and while
# dd fsyncs as fast as it can on the generator core. On the benchmark VM the host stops
# both vCPUs for 11-16 ms of every 100 ms once the fsync rate passes ~2,500/s (what paced
# group commit avoids). Prints "idle_ms_per_s busy_ms_per_s busy_max_ms spacing_ms n".
stall_probe() {
  local idle busy dd_pid
  idle=$(taskset -c "$CORE_SRV" "$LOADGEN" stalls --seconds 3)
  taskset -c "$CORE_GEN" dd if=/dev/zero of="$TMP/stall.probe" bs=4k count=1000000 oflag=dsync 2>/dev/null &
  dd_pid=$!
  sleep 0.3
  busy=$(taskset -c "$CORE_SRV" "$LOADGEN" stalls --seconds 3)
  kill "$dd_pid" 2>/dev/null
  wait "$dd_pid" 2>/dev/null || true
  rm -f "$TMP/stall.probe"
  echo "$(kv per_s_ms "$idle") $(kv per_s_ms "$busy") $(kv max_ms "$busy") $(kv median_spacing_ms "$busy") $(kv count "$busy")"
}
