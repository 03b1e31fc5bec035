# shellcheck shell=bash
# Sourced by benches/run.sh: the memory phase (T7), on fresh daemons: RSS per active
# counter (net of a one-key control) and RSS growth over T7_IDS distinct event ids.

T7_KEYS=$((T7_CONTRACTS * T7_BUCKETS * T7_MINUTES))
mem_load() { # name label args... -> LOADGEN line (count mode, 16 connections)
  local name=$1 label=$2
  shift 2
  lg "$RES/mem-$label.txt" --label "$label" --url "http://${API[$name]}" --conns $C_BATCH \
    --server-pid "${PID[$name]}" "$@"
}
phase_memory() {
  local kind name line rss0 rss1
  # Counters: two fresh daemons (buffered, flush_interval 1h so every counter stays
  # in memory, lateness 3h for 100 minutes of keys), the same warm-up on both, then the
  # same number of events: on one key (control) or on T7_KEYS distinct keys.
  for kind in ctl keys; do
    name=mem-$kind
    log "T7 counters ($kind): starting a fresh meterd"
    start_meterd "$name" buffered 1h 3h 127.0.0.1:0 127.0.0.1:0 taskset -c "$CORE_SRV"
    setup_meterd "$name" bench-k 1
    if [ $kind = keys ]; then setup_meterd "$name" bench-k "$T7_CONTRACTS"; fi
    line=$(mem_load "$name" "$kind-warm" --body keys --events 1000 --requests 100 \
      --contract-prefix bench-k --contracts 1 --buckets 1 --minutes 1)
    sleep 2
    rss0=$(rss_kib "${PID[$name]}")
    if [ $kind = ctl ]; then
      line=$(mem_load "$name" "$kind" --body keys --events 1000 --requests $((T7_KEYS / 1000)) \
        --contract-prefix bench-k --contracts 1 --buckets 1 --minutes 1)
    else
      line=$(mem_load "$name" "$kind" --body keys --events 1000 --requests $((T7_KEYS / 1000)) \
        --contract-prefix bench-k --contracts "$T7_CONTRACTS" --buckets "$T7_BUCKETS" \
        --minutes "$T7_MINUTES")
    fi
    sleep 2
    rss1=$(rss_kib "${PID[$name]}")
    printf 'counters-%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$rss0" "$rss1" "$(rss_kib "${PID[$name]}" VmHWM:)" \
      "$(kv events_2xx_per_s "$line")" "$(check_line "$line" 1)" >>"$MEM"
    stop_pid "${PID[$name]}" KILL
    unset "PID[$name]"
  done
  # Event ids: normal operation (flush every 1 s), T7_IDS distinct ids on 8 contracts.
  name=mem-ids
  log "T7 ids: $T7_IDS distinct event ids"
  EXTRA_CONFIG=${T7_IDS_CONFIG:-} start_meterd "$name" buffered 1s 1h 127.0.0.1:0 127.0.0.1:0 taskset -c "$CORE_SRV"
  setup_meterd "$name" bench-c "$CONTRACTS"
  line=$(mem_load "$name" ids-warm --body batch --events 1000 --requests 100)
  sleep 3
  rss0=$(rss_kib "${PID[$name]}")
  line=$(mem_load "$name" ids --body batch --events 1000 --requests $((T7_IDS / 1000)))
  sleep 3
  rss1=$(rss_kib "${PID[$name]}")
  # What RocksDB holds at that point (memtables, block cache, table readers), for the report.
  curl -s "http://${MET[$name]}/metrics" | grep '^meterd_store_memory_bytes' >"$RES/ids-store-memory.txt" || true
  printf 'ids\t%s\t%s\t%s\t%s\t%s\n' "$rss0" "$rss1" "$(rss_kib "${PID[$name]}" VmHWM:)" \
    "$(kv events_2xx_per_s "$line")" "$(check_line "$line" 1)" >>"$MEM"
  stop_pid "${PID[$name]}" TERM
  unset "PID[$name]"
}
