# shellcheck shell=bash
# Sourced by benches/run.sh: driving examples/loadgen.rs (pinned to the generator core),
# checking its answers, recording a run into a throughput-style TSV, and the alternating
# rounds the throughput and floor phases share.

# lg OUTFILE ARGS...: runs loadgen pinned to the generator core; prints its LOADGEN line.
lg() {
  local out=$1
  shift
  if ! pin_gen "$LOADGEN" run --key "$KEY" "$@" >"$out" 2>&1; then
    log "loadgen failed ($out): $(tail -n 3 "$out")"
  fi
  grep '^LOADGEN ' "$out" | tail -n1 || true
}
# check_line LINE METERD(0/1): "ok" or what failed.
check_line() {
  local line=$1 meterd=$2 why=""
  [ -n "$line" ] || {
    echo "no-result"
    return
  }
  [ "$(kv requests "$line")" != 0 ] || why+="no-answers;"
  [ "$(kv non2xx "$line")" = 0 ] || why+="non2xx=$(kv non2xx "$line");"
  [ "$(kv errors "$line")" = 0 ] || why+="errors=$(kv errors "$line");"
  [ "$(kv unfinished "$line")" = 0 ] || why+="unfinished=$(kv unfinished "$line");"
  if [ "$meterd" = 1 ]; then
    local ok_req epr
    ok_req=$(kv requests_2xx "$line")
    epr=$(kv events_per_request "$line")
    local want=$((${ok_req:-0} * ${epr:-0}))
    [ "$(kv accepted "$line")" = "$want" ] || why+="accepted=$(kv accepted "$line")/$want;"
    [ "$(kv duplicates "$line")" = 0 ] || why+="duplicates;"
    [ "$(kv rejected "$line")" = 0 ] || why+="rejected;"
  fi
  echo "${why:-ok}"
}
# record ROUND NAME LINE METERD(0/1) [SERVER-METRICS]: one row of $TP: round, name, req/s,
# events/s, p50, p99, generator CPU %, server CPU %, checks, meterd's histogram means.
record() {
  local r=$1 name=$2 line=$3 m=$4
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$name" \
    "$(kv requests_per_s "$line")" "$(kv events_2xx_per_s "$line")" "$(kv p50_ms "$line")" \
    "$(kv p99_ms "$line")" "$(kv gen_cpu_pct "$line")" "$(kv server_cpu_pct "$line")" \
    "$(check_line "$line" "$m")" "${5:-}" >>"$TP"
}
# http_run ROUND CONFIG SERVER CONNS LOADGEN-ARGS...: one measured loadgen run, recorded
# with the server's histogram means over it (meterd only).
http_run() {
  local r=$1 c=$2 srv=$3 conns=$4 line before="" after="" m=0
  shift 4
  # meterd and the floor answer with counts to check; only meterd has histograms.
  case $srv in
    baseline) ;;
    floor-*) m=1 ;;
    *)
      m=1
      before=$(msnap "$srv")
      ;;
  esac
  local out="$RES/$r-$c.txt"
  [ -e "$out" ] && out="$RES/$r-$c-2.txt"
  line=$(lg "$out" --label "$c" --url "http://${API[$srv]}" --conns "$conns" \
    --server-pid "${PID[$srv]}" --warmup "$WARMUP_SECONDS" --duration "$ROUND_SECONDS" "$@")
  [ -z "$before" ] || after=$(msnap "$srv")
  record "$r" "$c" "$line" "$m" "$([ -z "$before" ] || mdelta "$before" "$after")"
}
# alternating_rounds LABEL CONFIGS FN: ROUNDS rounds of `FN ROUND CONFIG` over CONFIGS, the
# order reversed every other round.
alternating_rounds() {
  local label=$1 configs=$2 fn=$3 r order c
  for r in $(seq 1 "$ROUNDS"); do
    order=$configs
    [ $((r % 2)) -eq 0 ] && order=$(tr ' ' '\n' <<<"$configs" | tac | tr '\n' ' ')
    log "$label round $r/$ROUNDS: $order"
    for c in $order; do "$fn" "$r" "$c"; done
  done
}
