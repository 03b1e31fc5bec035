# shellcheck shell=bash
# Sourced by benches/run.sh: the latency phase (T5, T6). LAT_ROUNDS rounds of LAT_SECONDS
# at a fixed rate of 50% of T2's median (coordinated omission corrected: latency from the
# intended send time), meterd and the baseline alternating (the baseline rows show the
# floor of the generator and the kernel), with a side stream of GET /balance. Each meterd
# round is tagged by meterd's flusher activity and by the RocksDB jobs that ran in it.

# round events-file t0_us t1_us -> round, flushes and compactions that ran during the
# window [t0, t1] (a job started before its round and still running counts too), MB the
# compactions wrote, the longest compaction's ms. The events file is the daemon's whole
# RocksDB event log; a job with no start in it began before the log, one with no end had
# not ended when the log was copied.
rocksdb_round_summary() {
  awk -v r="$1" -v t0="$3" -v t1="$4" '
    function num(key) {
      if (match($0, "\"" key "\": [0-9]+")) return substr($0, RSTART + length(key) + 4, RLENGTH - length(key) - 4) + 0
      return -1
    }
    /"event": "(flush|compaction)_(started|finished)"/ {
      j = num("job"); t = num("time_micros")
      kind[j] = ($0 ~ /"event": "flush_/) ? "f" : "c"
      if ($0 ~ /_started"/) st[j] = t; else { en[j] = t; out[j] = num("total_output_size") }
    }
    END {
      for (j in kind) {
        s0 = (j in st) ? st[j] : 0; e0 = (j in en) ? en[j] : 1e18
        if (s0 > t1 || e0 < t0) continue
        if (kind[j] == "f") { f++; continue }
        c++; if (out[j] > 0) mb += out[j] / 1048576
        d = ((j in en) && (j in st)) ? (e0 - s0) / 1000 : -1
        if (d > tmax) tmax = d
      }
      printf "%s\t%d\t%d\t%.0f\t%.0f\n", r, f, c, mb, tmax
    }' "$2"
}
# settle_compactions: waits until the fsync daemon has no compaction running or pending
# (at most SETTLE_MAX seconds); sets SETTLE_SECS, the wait, for the report.
settle_compactions() {
  local settle_t0 settled=no busy
  settle_t0=$(date +%s%N)
  while [ $((($(date +%s%N) - settle_t0) / 1000000000)) -lt "$SETTLE_MAX" ]; do
    busy=$(curl -fsS "http://${MET[fsync]}/metrics" 2>/dev/null | awk '
      $1 == "meterd_store_background_jobs{kind=\"compaction\"}" { c = $2 }
      $1 == "meterd_store_pending_compaction_bytes" { p = $2 }
      END { print (c == "" || p == "" || c + 0 > 0 || p + 0 > 0) ? "yes" : "no" }')
    if [ "$busy" = no ]; then
      settled=yes
      break
    fi
    sleep 0.5
  done
  SETTLE_SECS=$(awk -v n="$(($(date +%s%N) - settle_t0))" 'BEGIN { printf "%.1f", n / 1e9 }')
  [ "$settled" = yes ] || SETTLE_SECS="$SETTLE_SECS (limit reached, compactions still running)"
  log "latency: compactions settled after $SETTLE_SECS s"
}
# latency_run ROUND M|B: one fixed-rate run on meterd fsync (M) or the baseline (B), a row
# of $LAT; for meterd also its window (unix µs) in lat-windows.tsv.
latency_run() {
  local r=$1 w=$2 before="" name line t0_us
  local extra=()
  if [ "$w" = M ]; then
    name=fsync
    extra=(--flush-pid "${PID[fsync]}")
    before=$(msnap fsync)
  else
    name=baseline
  fi
  t0_us=$(date +%s%6N)
  line=$(lg "$RES/lat-$r-$w.txt" --label "lat-$w" --url "http://${API[$name]}" --conns $C_T2 \
    --body single --rate "$T5_RATE" --warmup "$WARMUP_SECONDS" --duration "$LAT_SECONDS" \
    --side-path /v1/contracts/bench-q0/balance --side-rate $SIDE_RATE --side-conns $SIDE_CONNS \
    --server-pid "${PID[$name]}" "${extra[@]}" \
    ${LAT_SPANS:+--spans-out "$RES/lat-$r-$w.spans.tsv"})
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$w" \
    "$(kv target_rate "$line")" "$(kv achieved_rate "$line")" "$(kv p50_ms "$line")" \
    "$(kv p99_ms "$line")" "$(kv p999_ms "$line")" "$(kv max_ms "$line")" \
    "$(kv during_n "$line")" "$(kv during_p99_ms "$line")" "$(kv between_n "$line")" \
    "$(kv between_p99_ms "$line")" "$(kv side_p99_ms "$line")" "$(kv side_n "$line")" \
    "$(kv flushes "$line")" "$(kv flush_busy_ms "$line")" \
    "$(check_line "$line" "$([ "$w" = M ] && echo 1 || echo 0)")$([ "$(kv side_non2xx "$line")" = 0 ] || echo ";side_non2xx=$(kv side_non2xx "$line")")" \
    "$([ -z "$before" ] || mdelta "$before" "$(msnap fsync)")" >>"$LAT"
  if [ "$w" = M ]; then
    printf '%s\t%s\t%s\n' "$r" "$t0_us" "$(date +%s%6N)" >>"$RES/lat-windows.tsv"
  fi
}
phase_latency() {
  local m256 r order w a b
  read -r m256 _ _ <<<"$(col "$TP" M256f 3 | stats)"
  if [ "$m256" = nan ]; then
    m256=${T2_RPS:-10000}
    log "no T2 figure in this run: T5 rate from T2_RPS=$m256"
  fi
  T5_RATE=$(awk -v r="$m256" 'BEGIN { printf "%.0f", r / 2 }')
  # T5 asks for the latency at half of T2's rate: a steady load, not the catch-up after
  # the throughput rounds' saturating batches. Those leave RocksDB minutes of compaction
  # (in one run 50 s of dedupe compactions, 1 GB rewritten), which on the server's one
  # CPU overloads any request stream. So the rounds start once the fsync daemon has no
  # compaction running or pending (meterd's own gauges), at most SETTLE_MAX seconds;
  # the wait is reported, and compactions that T5's own load starts count in T5.
  if [ -n "${PID[fsync]:-}" ]; then
    settle_compactions
  fi
  for r in $(seq 1 "$LAT_ROUNDS"); do
    order="M B"
    [ $((r % 2)) -eq 0 ] && order="B M"
    log "latency round $r/$LAT_ROUNDS at $T5_RATE req/s: $order"
    for w in $order; do latency_run "$r" "$w"; done
  done
  # RocksDB's background work during each meterd round, from the daemon's event log (kept
  # with the results), so that a bad round can be traced to a flush or a compaction.
  grep -h 'EVENT_LOG_v1' "$TMP/fsync/data/LOG" >"$RES/fsync-rocksdb-events.txt" 2>/dev/null || true
  while IFS=$'\t' read -r r a b; do
    rocksdb_round_summary "$r" "$RES/fsync-rocksdb-events.txt" "$a" "$b" >>"$LATDB"
  done <"$RES/lat-windows.tsv"
}
