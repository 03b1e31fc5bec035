# shellcheck shell=bash
# Sourced by benches/run.sh: starting meterd and the bare hyper baseline on 127.0.0.1 in
# the temp dir (addresses in API and MET, pids in PID), their API, and the daemons the
# throughput, latency and floor phases share.

# start_meterd NAME DURABILITY FLUSH_INTERVAL LATENESS [LISTEN METRICS [WRAPPER...]]
start_meterd() {
  local name=$1 durability=$2 flush=$3 lateness=$4 listen=${5:-127.0.0.1:0} metrics=${6:-127.0.0.1:0}
  shift 6 2>/dev/null || shift $#
  local dir=$TMP/$name
  mkdir -p "$dir"
  cat >"$dir/meterd.toml" <<EOF
# Written by benches/run.sh.
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
data_dir = "$dir/data"
durability = "$durability"
flush_interval = "$flush"
lateness = "$lateness"
shutdown_grace = "10s"
${EXTRA_CONFIG:-}

[[api_keys]]
tenant = "default"
role = "admin"
sha256 = "$KEY_SHA"
name = "bench"
EOF
  [ -f "$dir/log" ] && mv "$dir/log" "$dir/log.$(date +%s%N)"
  : >"$dir/log"
  # The per-request access log is off, as in benches/load.sh (one log line per request
  # would be measured too).
  RUST_LOG="${RUST_LOG:-info,meterd::access=off}" "$@" "$METERD" serve --config "$dir/meterd.toml" \
    --listen "$listen" --metrics-listen "$metrics" --data-dir "$dir/data" >>"$dir/log" 2>&1 &
  PID[$name]=$!
  local line=""
  for _ in $(seq 1 1200); do
    kill -0 "${PID[$name]}" 2>/dev/null || die "$name exited during start-up: $(tail -n 5 "$dir/log")"
    line=$(grep -m1 '^meterd listening on ' "$dir/log" || true)
    [ -n "$line" ] && break
    sleep 0.05
  done
  [ -n "$line" ] || die "$name did not report its address"
  API[$name]=$(sed -E 's|^meterd listening on http://([^ ]+) .*|\1|' <<<"$line")
  MET[$name]=$(sed -E 's|.*\(metrics on http://([^)]+)\).*|\1|' <<<"$line")
  "$LOADGEN" wait-ready --url "http://${MET[$name]}/readyz" --timeout 300 >/dev/null ||
    die "$name not ready"
}
start_baseline() {
  local dir=$TMP/baseline
  mkdir -p "$dir"
  "${PIN_SRV[@]}" "$BASELINE" 127.0.0.1:0 >"$dir/log" 2>&1 &
  PID[baseline]=$!
  for _ in $(seq 1 200); do
    API[baseline]=$(sed -n 's|^baseline listening on http://||p' "$dir/log")
    [ -n "${API[baseline]}" ] && return 0
    sleep 0.05
  done
  die "baseline did not start"
}
api() { # name method path [body]; fails on non-2xx
  local name=$1 method=$2 path=$3 body=${4:-}
  local args=(-sS -X "$method" -H "Authorization: Bearer $KEY" -w '\n%{http_code}')
  [ -n "$body" ] && args+=(-H 'Content-Type: application/json' --data-binary "$body")
  local out code
  out=$(curl "${args[@]}" "http://${API[$name]}$path") || die "$method $path: curl failed"
  code=${out##*$'\n'}
  out=${out%$'\n'*}
  case $code in 2??) printf '%s' "$out" ;; *) die "$name $method $path: HTTP $code: $out" ;; esac
}
# setup_meterd NAME CONTRACT_PREFIX COUNT [QUOTA]: the lever and contracts (zero-padded
# names as loadgen writes them), with a hard monthly quota that is never reached if QUOTA.
setup_meterd() {
  local name=$1 prefix=$2 n=$3 quota=${4:-}
  local last=$((n - 1))
  local w=${#last}
  api "$name" PUT "/v1/levers/$LEVER" '{"aggregation":"sum","unit":"events"}' >/dev/null
  local body='{"customer":"bench"}'
  [ -n "$quota" ] &&
    body='{"customer":"bench","quotas":[{"lever":"'$LEVER'","period":"month","limit":"1000000000000000","mode":"hard"}]}'
  for i in $(seq 0 $((n - 1))); do
    api "$name" PUT "/v1/contracts/$prefix$(printf "%0${w}d" "$i")" "$body" >/dev/null
  done
}
usage_total() { # name contract_prefix count: usage of the lever over the contracts
  local name=$1 prefix=$2 n=$3 total=0 body v i
  local from
  from=$(date -u -d "@$(($(date +%s) - 7200))" +%Y-%m-%dT%H:%M:00Z)
  for i in $(seq 0 $((n - 1))); do
    body=$(api "$name" GET "/v1/contracts/$prefix$i/usage?lever=$LEVER&window=none&from=$from")
    v=$(grep -o '"value":"[0-9.]*"' <<<"$body" | head -n1 | cut -d'"' -f4 || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
rss_kib() { awk -v k="${2:-VmRSS:}" '$1 == k { print $2 }' "/proc/$1/status"; }
# start_shared_servers: meterd fsync and buffered and the baseline, for the throughput,
# latency and floor phases (the latency rounds meet the daemon the throughput rounds
# left), each meterd with the plain and the quota contracts.
start_shared_servers() {
  log "starting meterd (fsync and buffered) and the baseline, pinned to CPU $CORE_SRV"
  start_meterd fsync fsync 1s 1h 127.0.0.1:0 127.0.0.1:0 taskset -c "$CORE_SRV"
  start_meterd buffered buffered 1s 1h 127.0.0.1:0 127.0.0.1:0 taskset -c "$CORE_SRV"
  start_baseline
  local m
  for m in fsync buffered; do
    setup_meterd "$m" bench-c "$CONTRACTS"
    setup_meterd "$m" bench-q "$CONTRACTS" quota
  done
}
stop_shared_servers() {
  local n
  for n in fsync buffered baseline; do
    [ -n "${PID[$n]:-}" ] && stop_pid "${PID[$n]}" TERM
    unset "PID[$n]"
  done
}
