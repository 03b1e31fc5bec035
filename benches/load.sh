#!/usr/bin/env bash
# End-to-end ingest load test of meterd with wrk. One command:
#
#   bash benches/load.sh                       # fsync durability, 10 s per phase
#   DURABILITY=buffered bash benches/load.sh
#
# Steps: install wrk if missing (apt-get), build meterd in release, start it on a
# temporary config and data dir (kernel-chosen free ports, a random bench API key),
# create a `sum` lever and a few contracts, then run two wrk phases:
#   1. single: one event per POST /v1/events          (CONNS, default 64)
#   2. batch:  1,000-event JSON arrays per request     (BATCH_CONNS, default 16)
# Every event id is unique (run prefix + wrk thread + counter), so every event must be
# accepted. After each phase the contracts' usage totals (GET .../usage?window=none) are
# compared with the 2xx events wrk saw. At the end meterd is restarted on the same data
# dir to check that the durable totals (journal replayed) equal the live ones, then
# stopped with SIGTERM. Exit status 1 if any check fails.
#
# Environment (defaults):
#   DURABILITY=fsync|buffered  DURATION=10s  THREADS=2  CONNS=64  BATCH_CONNS=16
#   BATCH_EVENTS=1000  CONTRACTS=8  PHASES="single batch"  KEEP_TMP=0
#   CARGO_TARGET_DIR=$HOME/.cache/meterd/target   METERD_BIN (skip the build)
set -euo pipefail
shopt -s inherit_errexit

DURABILITY=${DURABILITY:-fsync}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
BATCH_CONNS=${BATCH_CONNS:-16}
BATCH_EVENTS=${BATCH_EVENTS:-1000}
CONTRACTS=${CONTRACTS:-8}
PHASES=${PHASES:-single batch}
KEEP_TMP=${KEEP_TMP:-0}
LEVER=bench_calls
CONTRACT_PREFIX=bench-c
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/meterd/target}

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'load.sh: %s\n' "$*" >&2; exit 1; }

case $DURABILITY in fsync | buffered) ;; *) die "DURABILITY must be fsync or buffered" ;; esac
for p in $PHASES; do
  case $p in single | batch) ;; *) die "PHASES may contain only: single batch" ;; esac
done

# --- (a) wrk ---------------------------------------------------------------------------
if ! command -v wrk >/dev/null 2>&1; then
  log "installing wrk"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "wrk is missing and sudo is unavailable"
    sudo=sudo
  fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
for tool in curl sha256sum od date; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done

# --- (b) build -------------------------------------------------------------------------
if [ -n "${METERD_BIN:-}" ]; then
  BIN=$METERD_BIN
else
  log "building meterd (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$REPO" && cargo build --release --quiet --bin meterd)
  BIN=$CARGO_TARGET_DIR/release/meterd
fi
[ -x "$BIN" ] || die "no meterd binary at $BIN"

# --- (c) config, start -----------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/meterd-load.XXXXXX")
PID=""
API=""
METRICS=""
stop_meterd() {
  [ -n "$PID" ] || return 0
  if kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 1 600); do
      kill -0 "$PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$PID" 2>/dev/null; then
      log "meterd did not stop within 60 s of SIGTERM; killing it"
      kill -KILL "$PID" 2>/dev/null || true
    fi
  fi
  local rc=0
  wait "$PID" 2>/dev/null || rc=$?
  PID=""
  return "$rc"
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_meterd || true
  if [ "$rc" -ne 0 ] && [ -f "$TMP/meterd.log" ]; then
    printf -- '--- last lines of the meterd log ---\n' >&2
    tail -n 20 "$TMP/meterd.log" >&2 || true
  fi
  if [ "$KEEP_TMP" = 1 ]; then
    log "kept $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

KEY="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
KEY_SHA=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)
RUN_PREFIX="r$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
cat >"$TMP/meterd.toml" <<EOF
# Written by benches/load.sh. Port 0: the kernel picks free ports, read back from the
# daemon's "meterd listening on" line.
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
data_dir = "$TMP/data"
durability = "$DURABILITY"
shutdown_grace = "10s"

[[api_keys]]
tenant = "bench"
role = "admin"
sha256 = "$KEY_SHA"
name = "bench"
EOF

start_meterd() {
  : >"$TMP/meterd.log"
  # Flags win over METERD_* variables that may be set in the caller's environment.
  RUST_LOG="${RUST_LOG:-info,meterd::access=off}" "$BIN" serve --config "$TMP/meterd.toml" --listen 127.0.0.1:0 \
    --metrics-listen 127.0.0.1:0 --data-dir "$TMP/data" >>"$TMP/meterd.log" 2>&1 &
  PID=$!
  local line=""
  for _ in $(seq 1 600); do
    kill -0 "$PID" 2>/dev/null || die "meterd exited during start-up"
    line=$(grep -m1 '^meterd listening on ' "$TMP/meterd.log" || true)
    [ -n "$line" ] && break
    sleep 0.1
  done
  [ -n "$line" ] || die "meterd did not report its listen address within 60 s"
  API=$(sed -E 's|^meterd listening on http://([^ ]+) .*|\1|' <<<"$line")
  METRICS=$(sed -E 's|.*\(metrics on http://([^)]+)\).*|\1|' <<<"$line")
  for _ in $(seq 1 600); do
    kill -0 "$PID" 2>/dev/null || die "meterd exited during start-up"
    if curl -fsS -o /dev/null "http://$API/readyz" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  die "meterd was not ready within 60 s"
}

log "starting meterd (durability=$DURABILITY, data in $TMP/data)"
start_meterd
log "meterd ready on http://$API (metrics http://$METRICS)"

# --- (d) lever and contracts -----------------------------------------------------------
api() { # method path [json body] -> prints body; fails on non-2xx
  local method=$1 path=$2 body=${3:-}
  local args=(-sS -X "$method" -H "Authorization: Bearer $KEY" -w '\n%{http_code}')
  [ -n "$body" ] && args+=(-H 'Content-Type: application/json' --data-binary "$body")
  local out code
  out=$(curl "${args[@]}" "http://$API$path") || die "$method $path: curl failed"
  code=${out##*$'\n'}
  out=${out%$'\n'*}
  case $code in 2??) printf '%s' "$out" ;; *) die "$method $path: HTTP $code: $out" ;; esac
}
api PUT "/v1/levers/$LEVER" '{"aggregation":"sum","unit":"events","description":"load test"}' >/dev/null
for i in $(seq 0 $((CONTRACTS - 1))); do
  api PUT "/v1/contracts/$CONTRACT_PREFIX$i" '{"customer":"c"}' >/dev/null
done

FROM=$(date -u -d "@$(($(date +%s) - 600))" +%Y-%m-%dT%H:%M:00Z)
usage_total() { # sum of the lever's usage over all bench contracts since FROM
  local total=0 i body v
  for i in $(seq 0 $((CONTRACTS - 1))); do
    body=$(api GET "/v1/contracts/$CONTRACT_PREFIX$i/usage?lever=$LEVER&window=none&from=$FROM")
    v=$(grep -o '"value":"[0-9.]*"' <<<"$body" | head -n1 | cut -d'"' -f4 || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
metric() { # current value of an unlabelled metric, or "?"
  curl -fsS "http://$METRICS/metrics" 2>/dev/null | awk -v m="$1" '$1 == m { print $2; f = 1 } END { if (!f) print "?" }'
}
HISTS="meterd_journal_group_size_requests meterd_journal_fsync_duration_seconds meterd_journal_write_duration_seconds meterd_flush_duration_seconds"
hist_snapshot() { # "name sum count" per histogram in HISTS
  local page
  page=$(curl -fsS "http://$METRICS/metrics" 2>/dev/null || true)
  awk -v names="$HISTS" '
    BEGIN { n = split(names, h, " "); for (i = 1; i <= n; i++) { s[h[i]] = 0; c[h[i]] = 0 } }
    { for (i = 1; i <= n; i++) {
        if ($1 == h[i] "_sum") s[h[i]] = $2
        if ($1 == h[i] "_count") c[h[i]] = $2 } }
    END { for (i = 1; i <= n; i++) print h[i], s[h[i]], c[h[i]] }' <<<"$page"
}
hist_report() { # before-snapshot after-snapshot: mean per histogram over the phase
  awk 'NR == FNR { s[$1] = $2; c[$1] = $3; next }
    { dc = $3 - c[$1]; ds = $2 - s[$1]
      if (dc <= 0) { printf "  %-40s (no samples)\n", $1; next }
      if ($1 ~ /_seconds$/) printf "  %-40s mean %.3f ms over %d\n", $1, 1000 * ds / dc, dc
      else printf "  %-40s mean %.1f over %d\n", $1, ds / dc, dc }' "$1" "$2"
}

# --- (e, f) wrk phases and checks -------------------------------------------------------
FAILS=()
fail() { FAILS+=("$*"); printf 'CHECK FAILED: %s\n' "$*"; }
SUMMARY=()
bench_val() { sed -n "s/^BENCH $1=//p" "$2" | head -n1; }

run_phase() { # name script conns
  local name=$1 script=$2 conns=$3 out=$TMP/wrk-$1.txt
  local before after delta
  before=$(usage_total)
  hist_snapshot >"$TMP/hist-$name-before"
  printf '\n######## %s: %s, %s connections, %s threads, %s, durability=%s\n' \
    "$name" "$(basename "$script")" "$conns" "$THREADS" "$DURATION" "$DURABILITY"
  METERD_KEY=$KEY RUN_PREFIX="$RUN_PREFIX-$name" LEVER=$LEVER CONTRACTS=$CONTRACTS \
    CONTRACT_PREFIX=$CONTRACT_PREFIX BATCH_EVENTS=$BATCH_EVENTS \
    wrk -t "$THREADS" -c "$conns" -d "$DURATION" --timeout 30s --latency \
    -s "$script" "http://$API" | tee "$out"
  # Requests wrk abandoned at the deadline may still be running in meterd.
  sleep 2
  after=$(usage_total)
  delta=$((after - before))
  hist_snapshot >"$TMP/hist-$name-after"

  local ev_ok unanswered accepted dups rejected non2xx rps eps
  ev_ok=$(bench_val events_2xx "$out")
  unanswered=$(bench_val events_unanswered "$out")
  accepted=$(bench_val accepted "$out")
  dups=$(bench_val duplicates "$out")
  rejected=$(bench_val rejected "$out")
  non2xx=$(bench_val requests_non2xx "$out")
  rps=$(sed -n 's/^Requests\/sec: *//p' "$out")
  eps=$(bench_val events_2xx_per_s "$out")
  [ -n "$ev_ok" ] || die "wrk produced no BENCH summary (see above)"

  printf -- '-------- %s results\n' "$name"
  printf 'wrk requests/s:            %s\n' "$rps"
  if [ "$name" = single ]; then
    printf 'events/s (= requests/s):   %s\n' "$rps"
  else
    printf 'events/s (= requests/s x %s): %s\n' "$BATCH_EVENTS" \
      "$(awk -v r="$rps" -v b="$BATCH_EVENTS" 'BEGIN { printf "%.0f", r * b }')"
  fi
  printf '2xx events/s:              %s\n' "$eps"
  printf 'latency ms p50/p90/p99/p99.9/max: %s / %s / %s / %s / %s\n' \
    "$(bench_val latency_p50_ms "$out")" "$(bench_val latency_p90_ms "$out")" \
    "$(bench_val latency_p99_ms "$out")" "$(bench_val latency_p99.9_ms "$out")" \
    "$(bench_val latency_max_ms "$out")"
  printf '2xx events: %s; accepted %s, duplicates %s, rejected %s; non-2xx requests: %s %s\n' \
    "$ev_ok" "$accepted" "$dups" "$rejected" "$non2xx" "$(bench_val non2xx_by_status "$out")"
  printf 'socket errors: %s\n' "$(bench_val socket_errors "$out")"
  printf 'server metrics over the phase:\n'
  hist_report "$TMP/hist-$name-before" "$TMP/hist-$name-after"
  printf 'usage total delta: %s (before %s, after %s); events unanswered at wrk stop: %s\n' \
    "$delta" "$before" "$after" "$unanswered"

  if [ "$non2xx" != 0 ]; then
    fail "$name: $non2xx non-2xx responses ($(bench_val non2xx_by_status "$out")): $(bench_val non2xx_sample "$out")"
  fi
  if [ "$accepted" != "$ev_ok" ] || [ "$dups" != 0 ] || [ "$rejected" != 0 ]; then
    fail "$name: 2xx events $ev_ok but accepted $accepted, duplicates $dups, rejected $rejected"
  fi
  if [ "$delta" -eq "$ev_ok" ]; then
    printf 'count check: OK (usage delta == 2xx events == %s)\n' "$ev_ok"
  elif [ "$delta" -gt "$ev_ok" ] && [ "$delta" -le $((ev_ok + unanswered)) ]; then
    printf 'count check: OK (usage delta %s = %s 2xx events + %s of the %s events whose response wrk abandoned at the deadline)\n' \
      "$delta" "$ev_ok" $((delta - ev_ok)) "$unanswered"
  elif [ "$delta" -lt "$ev_ok" ]; then
    fail "$name: usage delta $delta < $ev_ok acknowledged (2xx) events: $((ev_ok - delta)) acknowledged events are not counted"
  else
    fail "$name: usage delta $delta > 2xx events $ev_ok + unanswered $unanswered"
  fi
  SUMMARY+=("$name: $rps req/s, $eps 2xx events/s, p50 $(bench_val latency_p50_ms "$out") ms, p99 $(bench_val latency_p99_ms "$out") ms, non-2xx $non2xx, usage delta $delta vs 2xx events $ev_ok")
}

for phase in $PHASES; do
  case $phase in
    single) run_phase single "$BENCH_DIR/single.lua" "$CONNS" ;;
    batch) run_phase batch "$BENCH_DIR/batch.lua" "$BATCH_CONNS" ;;
  esac
done

# --- after the load: leaked claims, durable totals --------------------------------------
printf '\n######## after the load\n'
claims=$(metric meterd_dedupe_inflight_ids)
printf 'in-flight dedupe claims left (meterd_dedupe_inflight_ids): %s\n' "$claims"
if [ "$claims" != "?" ] && [ "$claims" != 0 ]; then
  fail "$claims event-id claims are still held with no request in flight (requests whose connection closed mid-request never released their claims)"
fi
live=$(usage_total)
log "restarting meterd on the same data dir to compare live and durable totals"
stop_meterd || fail "meterd exited with status $? after SIGTERM"
start_meterd
durable=$(usage_total)
printf 'usage total: live %s, after restart %s\n' "$live" "$durable"
if [ "$durable" != "$live" ]; then
  fail "usage total changed across a restart ($live -> $durable): $((durable - live)) events were committed but not counted live"
fi
stop_meterd || fail "meterd exited with status $? after SIGTERM"

printf '\n######## summary (durability=%s, duration=%s, threads=%s)\n' "$DURABILITY" "$DURATION" "$THREADS"
for s in "${SUMMARY[@]}"; do printf '%s\n' "$s"; done
if [ "${#FAILS[@]}" -gt 0 ]; then
  printf '%d check(s) FAILED:\n' "${#FAILS[@]}"
  for f in "${FAILS[@]}"; do printf '  - %s\n' "$f"; done
  exit 1
fi
printf 'all checks passed\n'
