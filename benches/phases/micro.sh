# shellcheck shell=bash
# Sourced by benches/run.sh: the micro-benchmarks phase, `cargo bench --bench micro`
# (benches/micro.rs) pinned to CORE_SRV, medians read from criterion's estimates.json.

MICRO_ARGS=()
[ "$QUICK" = 1 ] && MICRO_ARGS=(--warm-up-time 0.1 --measurement-time 0.3 --sample-size 10)
MICRO_CMD="cargo bench --bench micro${MICRO_ARGS[*]:+ -- ${MICRO_ARGS[*]}}"
phase_micro() {
  local marker est d id el med
  log "micro-benchmarks: $MICRO_CMD (pinned to CPU $CORE_SRV)"
  marker=$RES/micro.marker
  touch "$marker"
  sleep 1
  (cd "$REPO" && pin_srv cargo bench --quiet --bench micro -- "${MICRO_ARGS[@]}") >"$RES/micro.txt" 2>&1 ||
    log "cargo bench failed: $(tail -n 5 "$RES/micro.txt")"
  find "$CARGO_TARGET_DIR/criterion" -path '*/new/estimates.json' -newer "$marker" 2>/dev/null | sort |
    while read -r est; do
      d=$(dirname "$est")
      id=$(sed -n 's/.*"full_id":"\([^"]*\)".*/\1/p' "$d/benchmark.json")
      el=$(sed -n 's/.*"Elements":\([0-9]*\).*/\1/p' "$d/benchmark.json")
      med=$(sed -E 's/.*"median":\{"confidence_interval":\{[^}]*\},"point_estimate":([0-9.eE+-]+).*/\1/' "$est")
      printf '%s\t%s\t%s\n' "$id" "${el:-1}" "$med" >>"$MICRO"
    done
}
