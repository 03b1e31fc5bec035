# shellcheck shell=bash
# Sourced by benches/run.sh: the throughput phase (T1-T4, T9, Redis). ROUNDS rounds; in
# each, every configuration runs for WARMUP_SECONDS + ROUND_SECONDS, meterd and its
# comparison back to back, the order reversed every other round. Ratios are taken within
# a round, then the median over rounds (the report).

# `batches`: an unmeasured batch run, then Mbatch and MbatchQ twice each, A B B A in odd
# rounds and B A A B in even ones. Each batch run leaves dedupe compaction work that the
# next one pays, and the first batch run after the single-event runs finds none: with one
# run of each per round, T4 measured which of the two ran first (benches/analysis.md).
# Per-round ratios average a config's runs in the round.
ROUND_CONFIGS="B64 M64b B256 M256f Bbatch batches pg redis"
run_config() { # round config
  local r=$1 c=$2
  case $c in
    B64) http_run "$r" "$c" baseline $C_T1 --body single ;;
    M64b) http_run "$r" "$c" buffered $C_T1 --body single ;;
    B256) http_run "$r" "$c" baseline $C_T2 --body single ;;
    M256f) http_run "$r" "$c" fsync $C_T2 --body single ;;
    Bbatch) http_run "$r" "$c" baseline $C_BATCH --body batch --events $BATCH_EVENTS ;;
    Mbatch) http_run "$r" "$c" fsync $C_BATCH --body batch --events $BATCH_EVENTS ;;
    MbatchQ) http_run "$r" "$c" fsync $C_BATCH --body batch --events $BATCH_EVENTS --contract-prefix bench-q ;;
    batches)
      lg "$RES/$r-batch-warmup.txt" --label batch-warmup --url "http://${API[fsync]}" \
        --conns $C_BATCH --warmup 0 --duration "$ROUND_SECONDS" --body batch \
        --events $BATCH_EVENTS >/dev/null
      local seq="Mbatch MbatchQ MbatchQ Mbatch"
      [ $((r % 2)) -eq 0 ] && seq="MbatchQ Mbatch Mbatch MbatchQ"
      for c in $seq; do run_config "$r" "$c"; done
      ;;
    pg) run_pg "$r" ;;
    redis) run_redis "$r" ;;
  esac
}
phase_throughput() {
  start_peers
  # Calibrates the Redis request count (redis-benchmark has no duration option).
  run_redis 0
  sed -i '/^0\t/d' "$TP"
  alternating_rounds throughput "$ROUND_CONFIGS" run_config
  stop_peers
}
