# shellcheck shell=bash
# Sourced by benches/run.sh: the restart phase (T8). A fresh fsync daemon takes
# T8_EVENTS accepted events, none flushed (flush_interval 1h), then is killed with
# SIGKILL and restarted on the same ports three times, each timed from the exec to the
# first 200 of /readyz; every restart replays the whole journal. Sets T8_ACCEPTED and
# T8_LOAD_CHECK for the report.

phase_restart() {
  local name=restart line listen metrics i t0 dir ready total replayed
  log "T8: $T8_EVENTS accepted events, none flushed (flush_interval 1h), then kill -9"
  start_meterd "$name" fsync 1h 1h 127.0.0.1:0 127.0.0.1:0 taskset -c "$CORE_SRV"
  setup_meterd "$name" bench-c "$CONTRACTS"
  line=$(lg "$RES/restart-load.txt" --label restart-load --url "http://${API[$name]}" --conns $C_BATCH \
    --body batch --events 1000 --requests $((T8_EVENTS / 1000)))
  T8_ACCEPTED=$(kv accepted "$line")
  T8_LOAD_CHECK=$(check_line "$line" 1)
  listen=${API[$name]}
  metrics=${MET[$name]}
  for i in 1 2 3; do
    stop_pid "${PID[$name]}" KILL
    t0=$(date +%s%N)
    # Same ports as before, so that clients would find it again.
    dir=$TMP/$name
    mv "$dir/log" "$dir/log.$i"
    : >"$dir/log"
    RUST_LOG="${RUST_LOG:-info,meterd::access=off}" taskset -c "$CORE_SRV" "$METERD" serve \
      --config "$dir/meterd.toml" --listen "$listen" --metrics-listen "$metrics" \
      --data-dir "$dir/data" >>"$dir/log" 2>&1 &
    PID[$name]=$!
    ready=$("$LOADGEN" wait-ready --url "http://$metrics/readyz" --since-ns "$t0" --timeout 300 |
      sed -n 's/^READY ms=//p' || true)
    total=$(usage_total "$name" bench-c "$CONTRACTS")
    replayed=$(sed 's/\x1b\[[0-9;]*m//g' "$dir/log" | sed -n 's/.*journal replayed.*events=\([0-9]*\).*/\1/p' | head -n1)
    printf '%s\t%s\t%s\t%s\t%s\n' "$i" "$ready" "$total" "${replayed:-?}" \
      "$(rss_kib "${PID[$name]}")" >>"$RST"
    log "restart $i: ready after $ready ms, usage total $total (accepted $T8_ACCEPTED)"
  done
  stop_pid "${PID[$name]}" KILL
  unset "PID[$name]"
}
