# shellcheck shell=bash
# Sourced by benches/run.sh: the durable floor phase.
#
# The baseline binary with --durable (examples/baseline.rs): per event only a serde_json
# parse, a RocksDB lookup of the id, a RocksDB record of it (buffered: written from the
# request's task; fsync: group commit paced at 1 ms, as meterd's) and a sum per contract.
# Its rate bounds what any design with exactly-once, durable events can reach here; the
# rounds alternate baseline, floor and meterd on the targets' three shapes. They run after
# the latency rounds, so that T5 meets the daemon the throughput rounds left, as before.

start_floor() { # NAME MODE
  local name=$1 mode=$2 dir=$TMP/$1
  mkdir -p "$dir"
  "${PIN_SRV[@]}" "$BASELINE" 127.0.0.1:0 --durable "$mode" --data "$dir/data" >"$dir/log" 2>&1 &
  PID[$name]=$!
  for _ in $(seq 1 200); do
    API[$name]=$(sed -n 's|^baseline listening on http://||p' "$dir/log")
    [ -n "${API[$name]}" ] && return 0
    sleep 0.05
  done
  die "$name did not start: $(tail -n 3 "$dir/log")"
}
FLOOR_CONFIGS="B64 F64b M64b B256 F256f M256f Bbatch Fbatch Mbatch"
floor_config() { # round config: one measured run into $FL
  local r=$1 c=$2
  case $c in
    B64) TP=$FL http_run "$r" "fl-$c" baseline $C_T1 --body single ;;
    F64b) TP=$FL http_run "$r" "fl-$c" floor-buffered $C_T1 --body single ;;
    M64b) TP=$FL http_run "$r" "fl-$c" buffered $C_T1 --body single ;;
    B256) TP=$FL http_run "$r" "fl-$c" baseline $C_T2 --body single ;;
    F256f) TP=$FL http_run "$r" "fl-$c" floor-fsync $C_T2 --body single ;;
    M256f) TP=$FL http_run "$r" "fl-$c" fsync $C_T2 --body single ;;
    Bbatch) TP=$FL http_run "$r" "fl-$c" baseline $C_BATCH --body batch --events $BATCH_EVENTS ;;
    Fbatch) TP=$FL http_run "$r" "fl-$c" floor-fsync $C_BATCH --body batch --events $BATCH_EVENTS ;;
    Mbatch) TP=$FL http_run "$r" "fl-$c" fsync $C_BATCH --body batch --events $BATCH_EVENTS ;;
  esac
}
phase_floor() {
  local n
  log "starting the durable floor (buffered and fsync), pinned to CPU $CORE_SRV"
  start_floor floor-buffered buffered
  start_floor floor-fsync fsync
  alternating_rounds floor "$FLOOR_CONFIGS" floor_config
  for n in floor-buffered floor-fsync; do
    stop_pid "${PID[$n]}" TERM
    unset "PID[$n]"
  done
}
