# shellcheck shell=bash
# Sourced by benches/run.sh: the report's raw figures, every round of every phase but the
# profile and the micro-benchmarks.

# rounds_table RESULTS SORTED: the per-run table of throughput-style results (rows sorted
# by round into SORTED, with the server CPU per event derived).
rounds_table() {
  echo "| round | config | req/s | 2xx events/s | p50 ms | p99 ms | generator CPU % | server CPU % | server CPU µs per event | checks | meterd histograms (means over the run) |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  sort -t$'\t' -k1,1n -s "$1" | awk -F'\t' -v OFS='\t' '{ print $1, $2, $3, $4, $5, $6, $7, $8,
    ($8 != "" && $4 > 0) ? sprintf("%.2f", $8 * 10000 / $4) : "", $9, $10 }' >"$2"
  tsv_table "$2" s s 0 0 s s s s s s s
}
report_raw() {
  local slow f r
  echo "## Raw figures"
  echo
  if [ -s "$TP" ]; then
    echo "### Throughput rounds"
    echo
    echo "B = baseline, M = meterd; 64b = buffered, 256f = fsync; batch = 1,000 events per request"
    echo "($C_BATCH conns); Q = contracts with a hard monthly quota; pg/redis = peers. CPU shares are over"
    echo "the measured window (100% = one CPU). checks: for meterd every event of every 2xx answer"
    echo "must be \`accepted\`, with no non-2xx answers and no socket errors."
    echo
    rounds_table "$TP" "$RES/tp-sorted.tsv"
    echo
    echo "pg: p50 column = pgbench's latency average. redis: p50 from redis-benchmark."
    echo
  fi
  if [ -s "$FL" ]; then
    echo "### Floor rounds"
    echo
    echo "fl-B = baseline, fl-F = the durable floor, fl-M = meterd (the same daemons as above); checks:"
    echo "every event of every 2xx answer accepted, for the floor as for meterd."
    echo
    rounds_table "$FL" "$RES/fl-sorted.tsv"
    echo
  fi
  if [ -s "$LAT" ]; then
    echo "### Latency rounds (T5, T6)"
    echo
    echo "Fixed rate $(fmt "$T5_RATE") req/s over $C_T2 connections, latency from the intended send time."
    echo "\"During\" = requests whose [intended send, answer] span overlaps an interval in which meterd's"
    echo "flusher thread was on CPU or in disk wait (sampled every 1 ms from /proc); \"between\" = the others."
    echo "The baseline rows (B) show the floor of the generator and the kernel at the same rate."
    [ -z "${SETTLE_SECS:-}" ] || echo "The rounds started once the fsync daemon had no compaction running or pending after the throughput rounds: after $SETTLE_SECS s."
    echo "\"In meterd\" (last column): the share of POST /v1/events answered within 2.5 and 5 ms by meterd's own"
    echo "request histogram (from the parsed request head to the response handed to hyper); the rest of the"
    echo "loadgen's latency is the socket queue before meterd reads the request, the kernel and the generator."
    echo
    echo "| round | server | target/s | achieved/s | p50 ms | p99 ms | p99.9 ms | max ms | during n | during p99 ms | between n | between p99 ms | /balance p99 ms | /balance n | flushes | flusher busy ms | checks | meterd histograms |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    tsv_table "$LAT" s s 0 0 s s s s 0 s 0 s s 0 s s s s
    echo
    slow=$(for f in "$RES"/lat-*-M.txt; do
      [ -f "$f" ] || continue
      r=${f##*/lat-}
      sed -n "s/^slow episodes /- round ${r%-M.txt}: slow episodes /p" "$f"
    done)
    if [ -n "$slow" ]; then
      echo "Where meterd's slow requests were, by intended send time (loadgen; unix ms to match"
      echo "with the RocksDB event log):"
      echo
      echo "$slow"
      echo
    fi
    if [ -s "$LATDB" ]; then
      echo "RocksDB background work that ran during each meterd latency round, including jobs started"
      echo "before it (from the daemon's event log, kept as \`fsync-rocksdb-events.txt\` in the results):"
      echo
      echo "| round | flushes | compactions | MB written by compactions | longest compaction ms |"
      echo "|---|---|---|---|---|"
      tsv_table "$LATDB" s 0 0 0 0
      echo
    fi
  fi
  if [ -s "$MEM" ]; then
    echo "### Memory (T7)"
    echo
    echo "VmRSS from /proc/PID/status (the value of meterd_process_resident_memory_bytes), 2-3 s after"
    echo "each load. Counters: two fresh daemons, \`durability = buffered\`, \`flush_interval = 1h\` (every"
    echo "counter stays in memory), the same warm-up (100,000 events on one key); then $(fmt "$T7_KEYS") events"
    echo "on one key (ctl) or on $T7_CONTRACTS contracts x $T7_BUCKETS buckets x $T7_MINUTES minutes (keys). Ids: one"
    echo "daemon, \`flush_interval = 1s\`, warm-up 100,000 events, then $(fmt "$T7_IDS") events with distinct ids."
    [ -z "${T7_IDS_CONFIG:-}" ] || echo "Extra configuration of the ids daemon: \`$(tr '\n' ' ' <<<"$T7_IDS_CONFIG")\`."
    echo
    echo "| run | RSS before (KiB) | RSS after (KiB) | peak RSS (KiB) | 2xx events/s | checks |"
    echo "|---|---|---|---|---|---|"
    tsv_table "$MEM" s 0 0 0 0 s
    echo
  fi
  if [ -s "$RST" ]; then
    echo "### Restart (T8)"
    echo
    echo "A fresh daemon (\`fsync\`, \`flush_interval = 1h\`) took $(fmt "${T8_ACCEPTED:-0}") accepted events"
    echo "(1,000-event batches; load checks: ${T8_LOAD_CHECK:-?}), then was killed with SIGKILL; each restart is"
    echo "timed from the exec to the first 200 of /readyz (polled every 2 ms), then killed again"
    echo "(nothing is flushed in between, so each restart replays the whole journal)."
    echo
    echo "| restart | ready ms | usage total after restart | events replayed (log) | RSS KiB |"
    echo "|---|---|---|---|---|"
    tsv_table "$RST" s s 0 0 0
    echo
  fi
}
