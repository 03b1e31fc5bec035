# shellcheck shell=bash
# Sourced by benches/run.sh: the report's title, the machine it ran on and the pinning.

report_header() {
  local st_idle st_busy st_max st_spacing st_n
  echo "# meterd benchmarks"
  echo
  echo "Written by \`bash benches/run.sh\` on $RUN_DATE$([ "$QUICK" = 1 ] && echo ' (QUICK=1: smoke run, too short to judge targets)'),"
  echo "in $((ELAPSED_S / 60)) min $((ELAPSED_S % 60)) s: ROUNDS=$ROUNDS, ROUND_SECONDS=$ROUND_SECONDS (+${WARMUP_SECONDS} s warm-up),"
  echo "LAT_ROUNDS=$LAT_ROUNDS, LAT_SECONDS=$LAT_SECONDS, phases: $PHASES. The raw outputs (loadgen,"
  echo "pgbench, redis-benchmark, callgrind dumps) are left in \$CARGO_TARGET_DIR/bench-results."
  [ -n "$RUN_NOTE" ] && {
    echo
    echo "> $RUN_NOTE"
  }
  echo
  echo "## Machine"
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| CPU | $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) CPUs ($(lscpu | sed -n 's/^Thread(s) per core: *//p') thread(s) per core) |"
  echo "| memory | $(free -g | awk '/^Mem:/ { print $2 }') GiB |"
  echo "| kernel | $(uname -sr) |"
  echo "| OS | $(. /etc/os-release && echo "$PRETTY_NAME") |"
  echo "| rustc | $(rustc --version) |"
  echo "| PostgreSQL | $("$PGBIN/postgres" --version 2>/dev/null || echo n/a) |"
  echo "| Redis | $(redis-server --version 2>/dev/null | cut -d' ' -f3 || echo n/a) |"
  echo "| data dirs | $FS_DESC |"
  echo "| one 4 KiB O_DSYNC write (\`dd oflag=dsync\`, 300 writes) | $DSYNC_START ms at the start, $DSYNC_END ms at the end |"
  if [ -n "${STALLS:-}" ]; then
    read -r st_idle st_busy st_max st_spacing st_n <<<"$STALLS"
    echo "| CPU time taken from a thread spinning on CPU $CORE_SRV (\`loadgen stalls\`, 3 s) | alone: $st_idle ms/s; while \`dd oflag=dsync\` fsyncs as fast as it can on CPU $CORE_GEN: $st_busy ms/s ($st_n stalls of up to $st_max ms, median spacing $st_spacing ms) |"
  fi
  echo "| load average (1/5/15 min) | at start $LOAD_START, at the end $LOAD_END |"
  echo
  echo "Pinning: the generators (loadgen, pgbench, redis-benchmark) run on CPU $CORE_GEN, every server"
  echo "(meterd with all its threads, the baseline, PostgreSQL, Redis) on CPU $CORE_SRV (\`taskset -c\`)."
  echo "With one CPU each, tokio starts one worker thread in meterd and in the baseline alike."
  echo "meterd runs with \`RUST_LOG=info,meterd::access=off\` (no per-request access log line)."
  echo
}
