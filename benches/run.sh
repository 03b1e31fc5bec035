#!/usr/bin/env bash
# meterd's performance harness: one command runs every measurement and writes the report.
#
#   bash benches/run.sh                 # full run (~15 min on 2 cores), writes BENCHMARKS.md
#   QUICK=1 bash benches/run.sh         # smoke run (~6 min), writes $TMPDIR/meterd-bench-quick.md
#   REPORT_FROM=$CARGO_TARGET_DIR/bench-results bash benches/run.sh   # rewrite the report only
#
# What it does (benches/README.md has the details):
#  1. installs what is missing with apt-get (PostgreSQL, Redis, valgrind, util-linux);
#  2. builds meterd, the bare hyper baseline (examples/baseline.rs) and the load
#     generator (examples/loadgen.rs) in the release profile;
#  3. starts every server itself on 127.0.0.1 in a temp dir, servers pinned to CORE_SRV,
#     generators to CORE_GEN (taskset);
#  4. throughput (T1-T4, T9, Redis): ROUNDS alternating rounds of ROUND_SECONDS per
#     configuration, meterd and its comparison back to back, the order reversed every
#     other round; ratios are taken within a round, then the median over rounds;
#  5. latency (T5, T6): fixed-rate single events at 50% of T2's median rate (coordinated
#     omission corrected), tagged by meterd's flusher activity, plus GET /balance; the
#     rounds start once the throughput rounds' compactions have finished (SETTLE_MAX);
#  5b. the durable floor: the baseline binary with --durable (a RocksDB lookup and record
#     per event), alternated with the baseline and meterd on T1's, T2's and T3's shapes;
#  6. memory (T7) and restart (T8) on fresh daemons;
#  7. callgrind instruction counts per request (meterd fsync, buffered, the baseline);
#  8. criterion micro-benchmarks (benches/micro.rs);
#  9. writes the report: machine, commands, summary table, raw figures, profile, micro,
#     and benches/analysis.md (hand-written reading of the figures) at the end.
#
# Environment (defaults for the full run; QUICK=1 shrinks them):
#   ROUNDS=5 ROUND_SECONDS=5 WARMUP_SECONDS=1 LAT_ROUNDS=3 LAT_SECONDS=8 SETTLE_MAX=300
#   T7_CONTRACTS=100 T7_BUCKETS=100 T7_MINUTES=100 (1,000,000 keys) T7_IDS=10000000
#   T7_IDS_CONFIG= (extra TOML lines for the ids daemon, e.g. a smaller memory_limit)
#   T8_EVENTS=1000000 CG_N1=500 CG_N2=1500
#   CORE_GEN=0 CORE_SRV=1 PHASES="throughput latency floor memory restart profile micro"
#   OUT=<repo>/BENCHMARKS.md RUN_NOTE="" KEEP_TMP=0 METERD=<target>/release/meterd
#   LAT_SPANS= (1: each latency round also writes lat-R-W.spans.tsv, intended send time in
#   unix µs and latency in µs per request, to place the tail against the server logs)
#   CARGO_TARGET_DIR=$HOME/.cache/meterd/target
set -euo pipefail
shopt -s inherit_errexit

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  : "${ROUNDS:=3}" "${ROUND_SECONDS:=1}" "${LAT_ROUNDS:=2}" "${LAT_SECONDS:=2}"
  : "${T7_CONTRACTS:=10}" "${T7_BUCKETS:=100}" "${T7_MINUTES:=100}" "${T7_IDS:=500000}"
  : "${T8_EVENTS:=100000}" "${CG_N1:=100}" "${CG_N2:=300}"
  : "${OUT:=${TMPDIR:-/tmp}/meterd-bench-quick.md}"
fi
ROUNDS=${ROUNDS:-5}
ROUND_SECONDS=${ROUND_SECONDS:-5}
WARMUP_SECONDS=${WARMUP_SECONDS:-1}
LAT_ROUNDS=${LAT_ROUNDS:-3}
LAT_SECONDS=${LAT_SECONDS:-8}
SETTLE_MAX=${SETTLE_MAX:-300}
SETTLE_SECS=""
T7_CONTRACTS=${T7_CONTRACTS:-100}
T7_BUCKETS=${T7_BUCKETS:-100}
T7_MINUTES=${T7_MINUTES:-100}
T7_IDS=${T7_IDS:-10000000}
T8_EVENTS=${T8_EVENTS:-1000000}
CG_N1=${CG_N1:-500}
CG_N2=${CG_N2:-1500}
CORE_GEN=${CORE_GEN:-0}
CORE_SRV=${CORE_SRV:-1}
PHASES=${PHASES:-throughput latency floor memory restart profile micro}
RUN_NOTE=${RUN_NOTE:-}
KEEP_TMP=${KEEP_TMP:-0}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/meterd/target}

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
OUT=${OUT:-$REPO/BENCHMARKS.md}
# Connections per configuration (the targets' figures).
C_T1=64
C_T2=256
C_BATCH=16
BATCH_EVENTS=1000
CONTRACTS=8
LEVER=bench_calls
SIDE_RATE=200
SIDE_CONNS=4

log() { printf '==> [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf 'run.sh: %s\n' "$*" >&2
  exit 1
}
# REPORT_FROM=DIR: no measurement, only the report, from the results of an earlier run
# kept in DIR (e.g. $CARGO_TARGET_DIR/bench-results after editing benches/analysis.md).
REPORT_FROM=${REPORT_FROM:-}
has_phase() { [ -z "$REPORT_FROM" ] && [[ " $PHASES " == *" $1 "* ]]; }
case $ROUND_SECONDS in '' | *[!0-9]*) die "ROUND_SECONDS must be a whole number of seconds" ;; esac
[ "$ROUNDS" -ge 1 ] || die "ROUNDS must be at least 1"
STARTED_S=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
# fsync_probe DIR: ms per 4 KiB O_DSYNC write (what one group commit costs at least).
fsync_probe() {
  dd if=/dev/zero of="$1/dsync.probe" bs=4k count=300 oflag=dsync 2>&1 |
    awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s,") printf "%.2f", $(i - 1) * 1000 / 300 }'
  rm -f "$1/dsync.probe"
}
# stall_probe: CPU time taken from a thread spinning on the server core, alone and while
# dd fsyncs as fast as it can on the generator core. On the benchmark VM the host stops
# both vCPUs for 11-16 ms of every 100 ms once the fsync rate passes ~2,500/s (what paced
# group commit avoids). Prints "idle_ms_per_s busy_ms_per_s busy_max_ms spacing_ms n".
stall_probe() {
  local idle busy dd_pid
  idle=$(taskset -c "$CORE_SRV" "$LOADGEN" stalls --seconds 3)
  taskset -c "$CORE_GEN" dd if=/dev/zero of="$TMP/stall.probe" bs=4k count=1000000 oflag=dsync 2>/dev/null &
  dd_pid=$!
  sleep 0.3
  busy=$(taskset -c "$CORE_SRV" "$LOADGEN" stalls --seconds 3)
  kill "$dd_pid" 2>/dev/null
  wait "$dd_pid" 2>/dev/null || true
  rm -f "$TMP/stall.probe"
  echo "$(kv per_s_ms "$idle") $(kv per_s_ms "$busy") $(kv max_ms "$busy") $(kv median_spacing_ms "$busy") $(kv count "$busy")"
}

# --- 1. packages ------------------------------------------------------------------------
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }
missing=()
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
command -v lscpu >/dev/null 2>&1 || missing+=(util-linux)
command -v curl >/dev/null 2>&1 || missing+=(curl)
PGBIN=$(pg_bin)
{ [ -n "$PGBIN" ] && [ -x "$PGBIN/initdb" ] && [ -x "$PGBIN/pgbench" ]; } ||
  missing+=(postgresql postgresql-contrib)
for t in redis-server redis-cli redis-benchmark; do
  command -v $t >/dev/null 2>&1 || missing+=(redis-server redis-tools)
done
if has_phase profile; then
  command -v callgrind_control >/dev/null 2>&1 || missing+=(valgrind)
fi
if [ "${#missing[@]}" -gt 0 ] && [ -z "$REPORT_FROM" ]; then
  # shellcheck disable=SC2207
  missing=($(printf '%s\n' "${missing[@]}" | sort -u))
  log "installing ${missing[*]} (apt-get)"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
  PGBIN=$(pg_bin)
fi
NCPU=$(nproc)
PIN_GEN=(taskset -c "$CORE_GEN")
PIN_SRV=(taskset -c "$CORE_SRV")
if [ "$NCPU" -lt 2 ]; then
  log "only $NCPU CPU: generator and servers cannot be pinned apart; pinning disabled"
  PIN_GEN=()
  PIN_SRV=()
fi
pin_gen() { "${PIN_GEN[@]}" "$@"; }
pin_srv() { "${PIN_SRV[@]}" "$@"; }

# --- 2. build ---------------------------------------------------------------------------
BUILD_CMD="cargo build --release --bins --examples"
REL=$CARGO_TARGET_DIR/release
# METERD=/path/to/meterd measures another build of meterd (A/B of a change) against the
# baseline and generator built here.
METERD=${METERD:-$REL/meterd}
BASELINE=$REL/examples/baseline
LOADGEN=$REL/examples/loadgen
if [ -z "$REPORT_FROM" ]; then
  log "building: $BUILD_CMD (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$REPO" && $BUILD_CMD --quiet)
  for b in "$METERD" "$BASELINE" "$LOADGEN"; do [ -x "$b" ] || die "missing $b"; done
fi

# --- temp dir, cleanup ------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/meterd-bench.XXXXXX")
chmod 755 "$TMP"
RES=$TMP/results
mkdir -p "$RES"
if [ -n "$REPORT_FROM" ]; then
  RES=$(cd "$REPORT_FROM" && pwd)
  [ -f "$RES/meta.env" ] || die "$REPORT_FROM has no meta.env (not a kept results dir)"
fi
# truncate FILE...: empties result files (never in REPORT_FROM mode).
truncate_results() { [ -n "$REPORT_FROM" ] || for f in "$@"; do : >"$f"; done; }
declare -A PID API MET
PG_DATA=""
REDIS_PID=""
stop_pid() { # pid [signal]
  local p=$1 sig=${2:-TERM}
  [ -n "$p" ] || return 0
  kill -0 "$p" 2>/dev/null || return 0
  kill "-$sig" "$p" 2>/dev/null || true
  for _ in $(seq 1 300); do
    kill -0 "$p" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
  { wait "$p"; } 2>/dev/null || true
}
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for n in "${!PID[@]}"; do stop_pid "${PID[$n]}" KILL; done
  stop_pid "$REDIS_PID" KILL
  if [ -n "$PG_DATA" ]; then as_pg "$PGBIN/pg_ctl" -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true; fi
  if [ "$KEEP_TMP" = 1 ] || [ "$rc" -ne 0 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

DSYNC_START=$([ -n "$REPORT_FROM" ] || fsync_probe "$TMP")
KEY="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
KEY_SHA=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)

# --- servers ----------------------------------------------------------------------------
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
# Server-side histograms: msnap NAME prints "sum count" of each; mdelta BEFORE AFTER prints
# their means over the interval.
HISTS="meterd_journal_fsync_duration_seconds meterd_journal_group_size_requests meterd_flush_duration_seconds"
msnap() {
  curl -fsS "http://${MET[$1]}/metrics" 2>/dev/null | awk -v names="$HISTS" '
    BEGIN { n = split(names, h, " ") }
    { for (i = 1; i <= n; i++) { if ($1 == h[i] "_sum") s[i] = $2; if ($1 == h[i] "_count") c[i] = $2 } }
    # Time inside meterd of POST /v1/events (from the request head parsed to the response
    # handed to hyper): requests within 2.5 ms and 5 ms, and all of them.
    $1 == "meterd_http_request_duration_seconds_bucket{route=\"events\",le=\"0.0025\"}" { b25 = $2 }
    $1 == "meterd_http_request_duration_seconds_bucket{route=\"events\",le=\"0.005\"}" { b5 = $2 }
    $1 == "meterd_http_request_duration_seconds_count{route=\"events\"}" { ball = $2 }
    END { for (i = 1; i <= n; i++) printf "%s %s ", s[i] + 0, c[i] + 0; printf "%s %s %s", b25 + 0, b5 + 0, ball + 0; print "" }' || true
}
mdelta() {
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ")
    df = y[2] - x[2]; dg = y[4] - x[4]; dl = y[6] - x[6]; dn = y[9] - x[9]
    f = (df > 0) ? sprintf("%.2f ms x%d", 1000 * (y[1] - x[1]) / df, df) : "-"
    g = (dg > 0) ? sprintf("%.1f req", (y[3] - x[3]) / dg) : "-"
    l = (dl > 0) ? sprintf("%.1f ms x%d", 1000 * (y[5] - x[5]) / dl, dl) : "-"
    printf "fsync %s, group %s, flush %s", f, g, l
    if (dn > 0) printf ", in meterd <= 2.5 ms %.2f%%, <= 5 ms %.2f%%", 100 * (y[7] - x[7]) / dn, 100 * (y[8] - x[8]) / dn }'
}

# --- loadgen helpers --------------------------------------------------------------------
kv() { sed -n "/ $1=/{s/.* $1=\([^ ]*\).*/\1/p;q}" <<<"$2"; }
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
TP=$RES/throughput.tsv # round name req/s events/s p50 p99 gen% srv% check
LAT=$RES/latency.tsv
LATDB=$RES/latency-rocksdb.tsv
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
truncate_results "$TP" "$LAT" "$LATDB" "$RES/lat-windows.tsv"
record() { # round name line meterd(0/1) [server metrics]
  local r=$1 name=$2 line=$3 m=$4
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$name" \
    "$(kv requests_per_s "$line")" "$(kv events_2xx_per_s "$line")" "$(kv p50_ms "$line")" \
    "$(kv p99_ms "$line")" "$(kv gen_cpu_pct "$line")" "$(kv server_cpu_pct "$line")" \
    "$(check_line "$line" "$m")" "${5:-}" >>"$TP"
}

# --- stats ------------------------------------------------------------------------------
# stats < values: "median min max" (nan when empty)
stats() {
  awk '/^[0-9.eE+-]+$/' | sort -g | awk '{ a[NR] = $1 }
    END { if (NR == 0) { print "nan nan nan"; exit }
          m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
          print m, a[1], a[NR] }'
}
# col FILE NAME FIELD: the field of NAME's rows whose checks (field 9) passed.
col() { awk -F'\t' -v n="$2" -v f="$3" '$2 == n && $f != "" && $9 == "ok" { print $f }' "$1"; }
# ratios FILE NUM_NAME NUM_FIELD DEN_NAME DEN_FIELD: per-round num/den (rows whose checks
# passed; a config run twice in a round counts with the mean of its runs)
ratios() {
  awk -F'\t' -v a="$2" -v af="$3" -v b="$4" -v bf="$5" '
    $9 != "ok" { next }
    $2 == a && $af + 0 > 0 { x[$1] += $af; nx[$1]++ } $2 == b && $bf + 0 > 0 { y[$1] += $bf; ny[$1]++ }
    END { for (r in x) if (r in y) printf "%.4f\n", (x[r] / nx[r]) / (y[r] / ny[r]) }' "$1"
}
# awk function fmt(value, decimals): thousands separators; "n/a" for nan or empty; other
# text unchanged.
AWK_FMT='function fmt(v, d,   s, n, p, i, o, neg) {
  if (v == "nan" || v == "") return "n/a"
  if (v !~ /^-?[0-9.]+([eE][-+]?[0-9]+)?$/) return v
  s = sprintf("%." d "f", v); n = split(s, p, "."); i = p[1]; o = ""; neg = (substr(i, 1, 1) == "-")
  if (neg) i = substr(i, 2)
  while (length(i) > 3) { o = "," substr(i, length(i) - 2) o; i = substr(i, 1, length(i) - 3) }
  o = i o; if (neg) o = "-" o; if (n > 1) o = o "." p[2]; return o }'
fmt() { awk -v v="$1" -v d="${2:-0}" "$AWK_FMT"' BEGIN { print fmt(v, d) }'; } # number [decimals]
# tsv_table FILE SPEC...: Markdown rows; per column "s" (text, "-" if empty) or the decimals.
tsv_table() {
  local file=$1
  shift
  awk -F'\t' -v spec="$*" "$AWK_FMT"'
    BEGIN { n = split(spec, sp, " ") }
    { line = "|"
      for (i = 1; i <= n; i++) line = line " " (sp[i] == "s" ? ($i == "" ? "-" : $i) : fmt($i, sp[i])) " |"
      print line }' "$file"
}
mmm() { # "median min max" [decimals] -> "m [min–max]"
  local m lo hi
  read -r m lo hi <<<"$1"
  echo "$(fmt "$m" "${2:-0}") [$(fmt "$lo" "${2:-0}")–$(fmt "$hi" "${2:-0}")]"
}
# mem_verdict VALUE LIMIT ROW...: the verdict, or "invalid" when a load's checks failed.
mem_verdict() {
  local v=$1 t=$2 row bad=""
  shift 2
  for row in "$@"; do
    bad+=$(awk -F'\t' -v r="$row" '$1 == r && $6 != "ok" { printf "%s: %s ", r, $6 }' "$MEM")
  done
  if [ -n "$bad" ]; then echo "**invalid** ($bad)"; else verdict "$v" '<=' "$t"; fi
}
verdict() { # value op target
  awk -v v="$1" -v o="$2" -v t="$3" 'BEGIN { if (v == "nan" || v == "") { print "n/a"; exit }
    ok = (o == ">=") ? (v >= t) : (v <= t); print ok ? "**pass**" : "**FAIL**" }'
}

# --- 3. servers for the throughput and latency phases -----------------------------------
PG_PORT=""
REDIS_PORT=""
REDIS_SHA=""
start_peers() {
  log "starting PostgreSQL ($PGBIN) and Redis, pinned to CPU $CORE_SRV"
  PG_DATA=$TMP/pg/data
  install -d -m 700 "$TMP/pg"
  [ "$(id -u)" -eq 0 ] && chown postgres "$TMP/pg"
  as_pg "$PGBIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 >"$RES/pg-initdb.log" 2>&1 ||
    die "initdb failed: $(tail -n 5 "$RES/pg-initdb.log")"
  PG_PORT=$(free_port)
  local opts="-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$TMP/pg"
  opts+=" -c max_connections=$((C_T2 + 20)) -c shared_buffers=256MB -c synchronous_commit=on -c fsync=on"
  as_pg env LC_ALL=C "${PIN_SRV[@]}" "$PGBIN/pg_ctl" -D "$PG_DATA" -l "$TMP/pg/log" -w -t 60 \
    -o "$opts" start >"$RES/pg-start.log" 2>&1 || die "PostgreSQL did not start: $(tail -n 5 "$TMP/pg/log")"
  "$PGBIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 postgres <<'SQL' >/dev/null
CREATE TABLE dedupe (
  tenant text NOT NULL, id text NOT NULL, received_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant, id));
CREATE TABLE counters (
  tenant text NOT NULL, contract text NOT NULL, lever text NOT NULL, minute timestamptz NOT NULL,
  value numeric NOT NULL, PRIMARY KEY (tenant, contract, lever, minute));
SQL
  # Per event: one dedupe insert and one upsert of the (contract, lever, minute) counter,
  # in one statement (one transaction, one commit), only counted when the id is new.
  cat >"$TMP/pg/event.sql" <<EOF
\\set n random(1, 9000000000000000000)
\\set c random(0, $((CONTRACTS - 1)))
WITH ins AS (INSERT INTO dedupe (tenant, id) VALUES ('default', 'pg-' || :n) ON CONFLICT DO NOTHING RETURNING 1)
INSERT INTO counters (tenant, contract, lever, minute, value)
  SELECT 'default', 'bench-c' || :c, '$LEVER', date_trunc('minute', now()), 1 FROM ins
ON CONFLICT (tenant, contract, lever, minute) DO UPDATE SET value = counters.value + EXCLUDED.value;
EOF
  REDIS_PORT=$(free_port)
  mkdir -p "$TMP/redis"
  "${PIN_SRV[@]}" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$TMP/redis" --appendonly yes \
    --appendfsync everysec --save '' --protected-mode no --daemonize no >"$TMP/redis/log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 1 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.05
  done
  # SET NX of the id (with the dedupe retention as TTL), then HINCRBY of the counter's
  # minute field, atomically, only for a new id.
  REDIS_SHA=$(redis-cli -p "$REDIS_PORT" SCRIPT LOAD "if redis.call('SET', KEYS[1], '1', 'NX', 'EX', 3024000) then local t = redis.call('TIME'); return redis.call('HINCRBY', KEYS[2], tostring(t[1] - t[1] % 60), 1) end return 0")
  [ -n "$REDIS_SHA" ] || die "Redis script load failed"
}
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null || {
      echo "$p"
      return
    }
  done
}
PG_CMD=""
REDIS_CMD=""
REDIS_N=20000
run_pg() { # round
  local out=$RES/$1-pg.txt
  # Opening 256 connections takes pgbench 1-3 s of its -T; its tps leaves that time out.
  local secs=$((ROUND_SECONDS + 3))
  PG_CMD="pgbench -n -M prepared -c $C_T2 -j 1 -T $secs -f event.sql (taskset -c $CORE_GEN)"
  pin_gen "$PGBIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -n -M prepared -c "$C_T2" -j 1 \
    -T "$secs" -f "$TMP/pg/event.sql" postgres >"$out" 2>&1 || log "pgbench failed: $(tail -n 3 "$out")"
  local tps lat fails
  tps=$(sed -n '/^tps = /{s/^tps = \([0-9.]*\) .*/\1/p;q}' "$out")
  lat=$(sed -n '/^latency average = /{s/^latency average = \([0-9.]*\) ms/\1/p;q}' "$out")
  fails=$(sed -n '/^number of failed transactions: /{s/^number of failed transactions: \([0-9]*\).*/\1/p;q}' "$out")
  printf '%s\tpg%s\t%s\t%s\t%s\t\t\t\t%s\n' "$1" "$C_T2" "$tps" "$tps" "$lat" \
    "$(if [ -z "$tps" ]; then echo no-tps; elif [ "${fails:-0}" != 0 ]; then echo "failed=$fails"; else echo ok; fi)" >>"$TP"
}
run_redis() { # round
  local out=$RES/$1-redis.txt
  REDIS_CMD="redis-benchmark -c $C_T1 -n <rate x ROUND_SECONDS> -r 1000000000000 -q EVALSHA <sha> 2 ev:__rand_int__ cnt:default:bench-c0:$LEVER (taskset -c $CORE_GEN)"
  pin_gen redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$C_T1" -n "$REDIS_N" -r 1000000000000 -q \
    EVALSHA "$REDIS_SHA" 2 "ev:__rand_int__" "cnt:default:bench-c0:$LEVER" >"$out" 2>&1 ||
    log "redis-benchmark failed: $(tail -n 3 "$out")"
  local rps p50
  rps=$(tr '\r' '\n' <"$out" | sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p' | tail -n1)
  p50=$(tr '\r' '\n' <"$out" | sed -n 's/.*requests per second, p50=\([0-9.]*\) msec.*/\1/p' | tail -n1)
  printf '%s\tredis%s\t%s\t%s\t%s\t\t\t\t%s\n' "$1" "$C_T1" "$rps" "$rps" "$p50" \
    "$([ -n "$rps" ] && echo ok || echo no-result)" >>"$TP"
  [ -n "$rps" ] && REDIS_N=$(awk -v r="$rps" -v s="$ROUND_SECONDS" 'BEGIN { n = int(r * s); print (n < 1000) ? 1000 : n }')
}

if has_phase throughput || has_phase latency || has_phase floor; then
  log "starting meterd (fsync and buffered) and the baseline, pinned to CPU $CORE_SRV"
  start_meterd fsync fsync 1s 1h 127.0.0.1:0 127.0.0.1:0 taskset -c "$CORE_SRV"
  start_meterd buffered buffered 1s 1h 127.0.0.1:0 127.0.0.1:0 taskset -c "$CORE_SRV"
  start_baseline
  for m in fsync buffered; do
    setup_meterd "$m" bench-c "$CONTRACTS"
    setup_meterd "$m" bench-q "$CONTRACTS" quota
  done
fi

# --- 4. throughput rounds ----------------------------------------------------------------
# `batches`: an unmeasured batch run, then Mbatch and MbatchQ twice each, A B B A in odd
# rounds and B A A B in even ones. Each batch run leaves dedupe compaction work that the
# next one pays, and the first batch run after the single-event runs finds none: with one
# run of each per round, T4 measured which of the two ran first (benches/analysis.md).
# Per-round ratios average a config's runs in the round.
ROUND_CONFIGS="B64 M64b B256 M256f Bbatch batches pg redis"
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
if has_phase throughput; then
  start_peers
  # Calibrates the Redis request count (redis-benchmark has no duration option).
  run_redis 0
  sed -i '/^0\t/d' "$TP"
  alternating_rounds throughput "$ROUND_CONFIGS" run_config
  stop_pid "$REDIS_PID" TERM
  REDIS_PID=""
  as_pg "$PGBIN/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null 2>&1 || true
  PG_DATA=""
fi

# --- 5. latency (T5, T6) ----------------------------------------------------------------
T5_RATE=""
if has_phase latency; then
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
    settle_t0=$(date +%s%N)
    settled=no
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
  fi
  for r in $(seq 1 "$LAT_ROUNDS"); do
    order="M B"
    [ $((r % 2)) -eq 0 ] && order="B M"
    log "latency round $r/$LAT_ROUNDS at $T5_RATE req/s: $order"
    for w in $order; do
      before=""
      if [ "$w" = M ]; then
        name=fsync
        extra=(--flush-pid "${PID[fsync]}")
        before=$(msnap fsync)
      else
        name=baseline
        extra=()
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
    done
  done
  # RocksDB's background work during each meterd round, from the daemon's event log (kept
  # with the results), so that a bad round can be traced to a flush or a compaction.
  grep -h 'EVENT_LOG_v1' "$TMP/fsync/data/LOG" >"$RES/fsync-rocksdb-events.txt" 2>/dev/null || true
  while IFS=$'\t' read -r r a b; do
    rocksdb_round_summary "$r" "$RES/fsync-rocksdb-events.txt" "$a" "$b" >>"$LATDB"
  done <"$RES/lat-windows.tsv"
fi
# --- 5b. the durable floor ---------------------------------------------------------------
# The baseline binary with --durable (examples/baseline.rs): per event only a serde_json
# parse, a RocksDB lookup of the id, a RocksDB record of it (buffered: written from the
# request's task; fsync: group commit paced at 1 ms, as meterd's) and a sum per contract.
# Its rate bounds what any design with exactly-once, durable events can reach here; the
# rounds alternate baseline, floor and meterd on the targets' three shapes. They run after
# the latency rounds, so that T5 meets the daemon the throughput rounds left, as before.
FL=$RES/floor.tsv
truncate_results "$FL"
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
if has_phase floor; then
  log "starting the durable floor (buffered and fsync), pinned to CPU $CORE_SRV"
  start_floor floor-buffered buffered
  start_floor floor-fsync fsync
  alternating_rounds floor "$FLOOR_CONFIGS" floor_config
  for n in floor-buffered floor-fsync; do
    stop_pid "${PID[$n]}" TERM
    unset "PID[$n]"
  done
fi

for n in fsync buffered baseline; do
  [ -n "${PID[$n]:-}" ] && stop_pid "${PID[$n]}" TERM
  unset "PID[$n]"
done

# --- 6. memory (T7) ---------------------------------------------------------------------
MEM=$RES/memory.tsv
truncate_results "$MEM"
T7_KEYS=$((T7_CONTRACTS * T7_BUCKETS * T7_MINUTES))
mem_load() { # name label args... -> LOADGEN line (count mode, 16 connections)
  local name=$1 label=$2
  shift 2
  lg "$RES/mem-$label.txt" --label "$label" --url "http://${API[$name]}" --conns $C_BATCH \
    --server-pid "${PID[$name]}" "$@"
}
if has_phase memory; then
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
fi

# --- 7. restart (T8) --------------------------------------------------------------------
RST=$RES/restart.tsv
truncate_results "$RST"
if has_phase restart; then
  name=restart
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
fi

# --- 8. profile (callgrind) -------------------------------------------------------------
PROF=$RES/profile.tsv
truncate_results "$PROF"
cg_count() { sed -n 's/^summary: //p' "$1" | head -n1; }
# cg_top FILE yes|no N: the N costliest functions (inclusive or self), source paths and
# object names cut off.
cg_top() {
  callgrind_annotate --inclusive="$2" --threshold=100 "$1" 2>/dev/null |
    sed -n '/file:function/,$p' | sed '1,2d' | awk 'NF' |
    sed -E 's#^( *[0-9,]+ \( *[0-9.]+%\)) +[^: ]+:#\1  #; s# \[[^]]*\]$##' |
    awk -v n="$3" 'NR <= n { print substr($0, 1, 160) }'
}
# Frames that wrap everything (threads, the tokio scheduler) and say nothing about cost.
WRAPPERS='clone$|thread_start|start_thread|call_once|__rust_begin_short_backtrace|tokio::runtime::(context|scheduler|task|blocking)|Scoped<T>::set|enter_runtime|BlockingTask'

# profile_one KIND SERVER BODY N1 N2: KIND names the result, SERVER is fsync, buffered or
# baseline, BODY single, batch (1,000 events) or batch-quota (the same on contracts with a
# hard monthly quota).
profile_one() {
  local kind=$1 server=$2 body=$3 n1=$4 n2=$5 name=cg-$1 url pid
  local cgdir=$TMP/$name
  mkdir -p "$cgdir"
  if [ "$server" = baseline ]; then
    valgrind --tool=callgrind --callgrind-out-file="$cgdir/cg.out" "$BASELINE" 127.0.0.1:0 >"$cgdir/log" 2>&1 &
    PID[$name]=$!
    for _ in $(seq 1 600); do
      API[$name]=$(sed -n 's|^baseline listening on http://||p' "$cgdir/log")
      [ -n "${API[$name]}" ] && break
      sleep 0.1
    done
  else
    start_meterd "$name" "$server" 1s 1h 127.0.0.1:0 127.0.0.1:0 \
      valgrind --tool=callgrind --callgrind-out-file="$cgdir/cg.out"
    setup_meterd "$name" bench-c "$CONTRACTS"
    [ "$body" = batch-quota ] && setup_meterd "$name" bench-q "$CONTRACTS" quota
  fi
  url="http://${API[$name]}"
  pid=${PID[$name]}
  local args=(--url "$url" --conns 8 --body single) per=1
  if [ "$body" = batch ]; then
    args=(--url "$url" --conns 4 --body batch --events 1000)
    per=1000
  elif [ "$body" = batch-quota ]; then
    args=(--url "$url" --conns 4 --body batch --events 1000 --contract-prefix bench-q)
    per=1000
  fi
  lg "$RES/$name-warm.txt" "${args[@]}" --requests $((200 / per + 2)) >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local l1 l2
  l1=$(lg "$RES/$name-n1.txt" "${args[@]}" --requests "$n1")
  callgrind_control -d "$pid" >/dev/null 2>&1
  l2=$(lg "$RES/$name-n2.txt" "${args[@]}" --requests "$n2")
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  local i1 i2
  i1=$(cg_count "$cgdir/cg.out.1")
  i2=$(cg_count "$cgdir/cg.out.2")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$n1" "$i1" "$n2" "$i2" "$per" \
    "$(awk -v a="$i1" -v b="$i2" -v n="$n1" -v m="$n2" -v e="$per" 'BEGIN { printf "%.0f", (b - a) / (m - n) / e }')" \
    "$(check_line "$l1" 0)/$(check_line "$l2" 0)" >>"$PROF"
  cg_top "$cgdir/cg.out.2" yes 80 >"$RES/cg-$kind-inclusive.txt"
  cg_top "$cgdir/cg.out.2" no 60 >"$RES/cg-$kind-self.txt"
  cp "$cgdir/cg.out.2" "$RES/callgrind.$kind.out"
  stop_pid "$pid" KILL
  unset "PID[$name]"
}
CG_B1=$(((CG_N1 + 99) / 100))
CG_B2=$(((CG_N2 + 99) / 100))
if has_phase profile; then
  log "callgrind: single events, $CG_N1 then $CG_N2 requests over 8 connections (fsync, buffered, baseline)"
  profile_one fsync fsync single "$CG_N1" "$CG_N2"
  profile_one buffered buffered single "$CG_N1" "$CG_N2"
  profile_one baseline baseline single "$CG_N1" "$CG_N2"
  log "callgrind: 1,000-event batches, $CG_B1 then $CG_B2 requests over 4 connections (fsync)"
  profile_one fsync-batch fsync batch "$CG_B1" "$CG_B2"
  log "callgrind: the same with a hard monthly quota on every contract (T4)"
  profile_one fsync-batch-quota fsync batch-quota "$CG_B1" "$CG_B2"
fi

# --- 9. micro-benchmarks ----------------------------------------------------------------
MICRO=$RES/micro.tsv
truncate_results "$MICRO"
MICRO_ARGS=()
[ "$QUICK" = 1 ] && MICRO_ARGS=(--warm-up-time 0.1 --measurement-time 0.3 --sample-size 10)
MICRO_CMD="cargo bench --bench micro${MICRO_ARGS[*]:+ -- ${MICRO_ARGS[*]}}"
if has_phase micro; then
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
fi

# --- 10. report -------------------------------------------------------------------------
if [ -z "$REPORT_FROM" ]; then
  ELAPSED_S=$(($(date +%s) - STARTED_S))
  LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
  DSYNC_END=$(fsync_probe "$TMP")
  STALLS=$(stall_probe)
  RUN_DATE=$(date -u +%Y-%m-%dT%H:%MZ)
  FS_DESC="$(df -T "$TMP" | awk 'NR == 2 { print $2 }') file system under $(dirname "$TMP")"
  [ -f "$TMP/pg/event.sql" ] && cp "$TMP/pg/event.sql" "$RES/event.sql"
  declare -p QUICK ROUNDS ROUND_SECONDS WARMUP_SECONDS LAT_ROUNDS LAT_SECONDS PHASES RUN_NOTE \
    ELAPSED_S LOAD_START LOAD_END DSYNC_START DSYNC_END STALLS RUN_DATE FS_DESC T5_RATE T7_KEYS T7_IDS \
    T7_CONTRACTS T7_BUCKETS T7_MINUTES T7_IDS_CONFIG T8_EVENTS T8_ACCEPTED T8_LOAD_CHECK PG_CMD REDIS_CMD \
    MICRO_CMD CORE_GEN CORE_SRV SETTLE_SECS 2>/dev/null >"$RES/meta.env" || true
else
  # shellcheck disable=SC1091
  . "$RES/meta.env"
  [ -z "${RUN_NOTE_OVERRIDE:-}" ] || RUN_NOTE=$RUN_NOTE_OVERRIDE
fi
log "writing $OUT"
{
  echo "# meterd benchmarks"
  echo
  echo "Written by \`bash benches/run.sh\` on $RUN_DATE$([ "$QUICK" = 1 ] && echo ' (QUICK=1: smoke run, too short to judge targets)'),"
  echo "in $((ELAPSED_S / 60)) min $((ELAPSED_S % 60)) s: ROUNDS=$ROUNDS, ROUND_SECONDS=$ROUND_SECONDS (+${WARMUP_SECONDS} s warm-up),"
  echo "LAT_ROUNDS=$LAT_ROUNDS, LAT_SECONDS=$LAT_SECONDS, phases: $PHASES. The raw outputs (loadgen,"
  echo "pgbench, redis-benchmark, callgrind dumps) are left in \$CARGO_TARGET_DIR/bench-results."
  [ -n "$RUN_NOTE" ] && {
    echo
    echo "> $RUN_NOTE"
  }
  echo
  echo "## Machine"
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| CPU | $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) CPUs ($(lscpu | sed -n 's/^Thread(s) per core: *//p') thread(s) per core) |"
  echo "| memory | $(free -g | awk '/^Mem:/ { print $2 }') GiB |"
  echo "| kernel | $(uname -sr) |"
  echo "| OS | $(. /etc/os-release && echo "$PRETTY_NAME") |"
  echo "| rustc | $(rustc --version) |"
  echo "| PostgreSQL | $("$PGBIN/postgres" --version 2>/dev/null || echo n/a) |"
  echo "| Redis | $(redis-server --version 2>/dev/null | cut -d' ' -f3 || echo n/a) |"
  echo "| data dirs | $FS_DESC |"
  echo "| one 4 KiB O_DSYNC write (\`dd oflag=dsync\`, 300 writes) | $DSYNC_START ms at the start, $DSYNC_END ms at the end |"
  if [ -n "${STALLS:-}" ]; then
    read -r st_idle st_busy st_max st_spacing st_n <<<"$STALLS"
    echo "| CPU time taken from a thread spinning on CPU $CORE_SRV (\`loadgen stalls\`, 3 s) | alone: $st_idle ms/s; while \`dd oflag=dsync\` fsyncs as fast as it can on CPU $CORE_GEN: $st_busy ms/s ($st_n stalls of up to $st_max ms, median spacing $st_spacing ms) |"
  fi
  echo "| load average (1/5/15 min) | at start $LOAD_START, at the end $LOAD_END |"
  echo
  echo "Pinning: the generators (loadgen, pgbench, redis-benchmark) run on CPU $CORE_GEN, every server"
  echo "(meterd with all its threads, the baseline, PostgreSQL, Redis) on CPU $CORE_SRV (\`taskset -c\`)."
  echo "With one CPU each, tokio starts one worker thread in meterd and in the baseline alike."
  echo "meterd runs with \`RUST_LOG=info,meterd::access=off\` (no per-request access log line)."
  echo
  echo "## Summary"
  echo
  echo "Medians over the rounds, [min–max] in brackets. A ratio is taken within each round"
  echo "(meterd and its comparison ran back to back), then the median of the per-round ratios."
  echo "Runs whose checks failed (see the raw tables) are left out of the medians."
  bad=$(cat "$TP" "$FL" "$LAT" 2>/dev/null | awk -F'\t' '($9 != "" && $9 != "ok" && NF <= 10) || (NF > 10 && $17 != "ok") { n++ } END { print n + 0 }')
  if [ "$bad" != 0 ]; then
    echo
    echo "**$bad run(s) failed their checks and are left out:**"
    echo
    awk -F'\t' 'NF <= 10 && $9 != "ok" { printf "- throughput round %s, %s: %s\n", $1, $2, $9 }
      NF > 10 && $17 != "ok" { printf "- latency round %s, %s: %s\n", $1, $2, $17 }' "$TP" "$FL" "$LAT"
  fi
  echo
  echo "| | what | measured | target | result |"
  echo "|---|---|---|---|---|"
  if [ -s "$TP" ]; then
    s=$(ratios "$TP" M64b 3 B64 3 | stats)
    echo "| T1 | single-event POST, buffered, $C_T1 conns: meterd / baseline req/s (meterd $(mmm "$(col "$TP" M64b 3 | stats)") req/s, baseline $(mmm "$(col "$TP" B64 3 | stats)")) | $(mmm "$s" 3) | ≥ 0.70 | $(verdict "${s%% *}" '>=' 0.70) |"
    s=$(ratios "$TP" M256f 3 B256 3 | stats)
    echo "| T2 | single-event POST, fsync, $C_T2 conns: meterd / baseline req/s (meterd $(mmm "$(col "$TP" M256f 3 | stats)") req/s, baseline $(mmm "$(col "$TP" B256 3 | stats)")) | $(mmm "$s" 3) | ≥ 0.50 | $(verdict "${s%% *}" '>=' 0.50) |"
    s=$(ratios "$TP" Mbatch 4 B64 3 | stats)
    echo "| T3 | 1,000-event batches, fsync, $C_BATCH conns: meterd events/s / baseline single-event req/s ($C_T1 conns) (meterd $(mmm "$(col "$TP" Mbatch 4 | stats)") events/s; baseline on the batch bodies: $(mmm "$(col "$TP" Bbatch 3 | stats)") req/s = $(mmm "$(col "$TP" Bbatch 4 | stats)") events/s) | $(mmm "$s" 2) | ≥ 15 | $(verdict "${s%% *}" '>=' 15) |"
    s=$(ratios "$TP" MbatchQ 4 Mbatch 4 | stats)
    echo "| T4 | T3 with a hard monthly quota on every event / without (with: $(mmm "$(col "$TP" MbatchQ 4 | stats)") events/s) | $(mmm "$s" 3) | ≥ 0.90 | $(verdict "${s%% *}" '>=' 0.90) |"
  fi
  if [ -s "$LAT" ]; then
    s=$(awk -F'\t' '$2 == "M" && $17 == "ok" { print $6 }' "$LAT" | stats)
    s2=$(awk -F'\t' '$2 == "M" && $17 == "ok" && $12 > 0 { printf "%.4f\n", $10 / $12 }' "$LAT" | stats)
    echo "| T5 | p99 latency, single-event fsync POST at $(fmt "$T5_RATE") req/s (50% of T2's median), $C_T2 conns, from the intended send time | $(mmm "$s" 2) ms | ≤ 5 ms | $(verdict "${s%% *}" '<=' 5) |"
    echo "| T5 | p99 during flushes / p99 between flushes (during: $(mmm "$(awk -F'\t' '$2 == "M" && $17 == "ok" { print $10 }' "$LAT" | stats)" 2) ms; between: $(mmm "$(awk -F'\t' '$2 == "M" && $17 == "ok" { print $12 }' "$LAT" | stats)" 2) ms) | $(mmm "$s2" 2) | ≤ 2 | $(verdict "${s2%% *}" '<=' 2) |"
    s=$(awk -F'\t' '$2 == "M" && $17 == "ok" { print $13 }' "$LAT" | stats)
    echo "| T6 | GET /balance p99 while T5 runs ($SIDE_RATE req/s on $SIDE_CONNS conns) | $(mmm "$s" 3) ms | ≤ 1 ms | $(verdict "${s%% *}" '<=' 1) |"
  fi
  if [ -s "$MEM" ]; then
    read -r _ c0 c1 _ _ _ <<<"$(grep '^counters-ctl' "$MEM")"
    read -r _ k0 k1 _ _ _ <<<"$(grep '^counters-keys' "$MEM")"
    raw=$(awk -v a="$k0" -v b="$k1" -v n="$T7_KEYS" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')
    net=$(awk -v a="$k0" -v b="$k1" -v c="$c0" -v d="$c1" -v n="$T7_KEYS" 'BEGIN { printf "%.0f", ((b - a) - (d - c)) * 1024 / n }')
    echo "| T7 | RSS per active counter, $(fmt "$T7_KEYS") distinct (contract, lever, bucket, minute) keys, net of a same-size one-key control (raw, control included: $raw B) | $net B | ≤ 300 B | $(mem_verdict "$net" 300 counters-ctl counters-keys) |"
    read -r _ i0 i1 _ _ _ <<<"$(grep '^ids' "$MEM")"
    g=$(awk -v a="$i0" -v b="$i1" 'BEGIN { printf "%.1f", (b - a) / 1024 }')
    echo "| T7 | RSS growth over $(fmt "$T7_IDS") distinct event ids | $g MiB | ≤ 64 MiB | $(mem_verdict "$g" 64 ids) |"
  fi
  if [ -s "$RST" ]; then
    s=$(cut -f2 "$RST" | stats)
    echo "| T8 | ready (/readyz 200) after kill -9 with $(fmt "$T8_EVENTS") accepted, unflushed events ($(wc -l <"$RST") restarts) | $(mmm "$s") ms | ≤ 5,000 ms | $(verdict "${s%% *}" '<=' 5000) |"
  fi
  if [ -s "$TP" ]; then
    s=$(ratios "$TP" M256f 3 "pg$C_T2" 3 | stats)
    echo "| T9 | single-event fsync ($C_T2 conns) / PostgreSQL peer tps ($C_T2 clients) (PostgreSQL $(mmm "$(col "$TP" "pg$C_T2" 3 | stats)") tps) | $(mmm "$s" 2) | ≥ 5 | $(verdict "${s%% *}" '>=' 5) |"
    s=$(ratios "$TP" M64b 3 "redis$C_T1" 3 | stats)
    echo "| – | single-event buffered ($C_T1 conns) / Redis peer (appendfsync everysec, $C_T1 clients) (Redis $(mmm "$(col "$TP" "redis$C_T1" 3 | stats)") req/s) | $(mmm "$s" 3) | (reported) | |"
  fi
  if [ -s "$TP" ]; then
    echo
    echo "### Server CPU per event (derived)"
    echo
    echo "The generator and the servers shared their CPUs with other processes, and the baseline"
    echo "never used its whole CPU (it waits on the round trip), so req/s ratios mix server cost"
    echo "with scheduling. The server's CPU time per event (its CPU share over the run / events per"
    echo "second, user + system, from /proc/PID/stat) is the cost itself; the last column is the"
    echo "ratio a target would show if the server CPU were the only bound (baseline µs / meterd µs)."
    echo
    echo "| config | server CPU µs per event | if CPU-bound: ratio to the baseline |"
    echo "|---|---|---|"
    cpu_us() { awk -F'\t' -v n="$1" '$2 == n && $9 == "ok" && $8 != "" && $4 > 0 { printf "%.4f\n", $8 * 10000 / $4 }' "$TP"; }
    cpu_ratio() { # baseline config, meterd config, factor: per-round baseline µs / meterd µs x factor
      awk -F'\t' -v a="$1" -v b="$2" -v f="$3" '$9 != "ok" || $8 == "" || $4 <= 0 { next }
        $2 == a { x[$1] += $8 * 10000 / $4; nx[$1]++ } $2 == b { y[$1] += $8 * 10000 / $4; ny[$1]++ }
        END { for (r in x) if (r in y && y[r] > 0) printf "%.4f\n", (x[r] / nx[r]) / (y[r] / ny[r]) * f }' "$TP"
    }
    for c in B64 M64b B256 M256f Bbatch Mbatch MbatchQ; do
      case $c in
        M64b) r="T1: $(mmm "$(cpu_ratio B64 M64b 1 | stats)" 3) (target ≥ 0.70)" ;;
        M256f) r="T2: $(mmm "$(cpu_ratio B256 M256f 1 | stats)" 3) (target ≥ 0.50)" ;;
        Mbatch) r="T3: $(mmm "$(cpu_ratio B64 Mbatch 1 | stats)" 2) x the baseline's single-event rate (target ≥ 15)" ;;
        MbatchQ) r="T4: $(mmm "$(cpu_ratio Mbatch MbatchQ 1 | stats)" 3) (target ≥ 0.90)" ;;
        *) r="" ;;
      esac
      echo "| $c | $(mmm "$(cpu_us "$c" | stats)" 2) | $r |"
    done
  fi
  if [ -s "$FL" ]; then
    echo
    echo "### The durable floor"
    echo
    echo "The baseline binary with \`--durable\` (examples/baseline.rs) does per event only what any"
    echo "exactly-once, durable meter must: a serde_json parse, a RocksDB lookup of the id, a RocksDB"
    echo "record of it in the write-ahead log (buffered: written from the request's task; fsync: group"
    echo "commit paced at 1 ms, as meterd's), a sum per contract. No API keys, registry, time windows,"
    echo "in-flight claims of ids (an id repeated within or across concurrent requests counts twice),"
    echo "decimals, quotas or metrics. Its rounds ($ROUNDS, alternating baseline, floor and meterd on"
    echo "each shape, order reversed every other round) ran after the latency rounds. If the floor"
    echo "misses a target, no design that keeps exactly-once durable events in RocksDB meets it here."
    echo
    echo "| shape | baseline | floor | meterd | floor / baseline | meterd / baseline | meterd / floor | target | server CPU µs per event: baseline; floor; meterd |"
    echo "|---|---|---|---|---|---|---|---|---|"
    fl_cpu() { awk -F'\t' -v n="$1" '$2 == n && $9 == "ok" && $8 != "" && $4 > 0 { printf "%.4f\n", $8 * 10000 / $4 }' "$FL" | stats; }
    for shape in T1 T2 T3; do
      case $shape in
        T1) b=fl-B64 f=fl-F64b mm=fl-M64b fld=3 bfld=3 what="single event, buffered, $C_T1 conns (req/s)" tgt="≥ 0.70" d=3 ;;
        T2) b=fl-B256 f=fl-F256f mm=fl-M256f fld=3 bfld=3 what="single event, fsync, $C_T2 conns (req/s)" tgt="≥ 0.50" d=3 ;;
        T3) b=fl-B64 f=fl-Fbatch mm=fl-Mbatch fld=4 bfld=3 what="1,000-event batches, fsync, $C_BATCH conns (events/s; ratios to the baseline's single-event req/s, $C_T1 conns)" tgt="≥ 15" d=2 ;;
      esac
      echo "| $shape: $what | $(mmm "$(col "$FL" "$b" "$bfld" | stats)") | $(mmm "$(col "$FL" "$f" "$fld" | stats)") | $(mmm "$(col "$FL" "$mm" "$fld" | stats)") | $(mmm "$(ratios "$FL" "$f" "$fld" "$b" "$bfld" | stats)" "$d") | $(mmm "$(ratios "$FL" "$mm" "$fld" "$b" "$bfld" | stats)" "$d") | $(mmm "$(ratios "$FL" "$mm" "$fld" "$f" "$fld" | stats)" 3) | $tgt | $(mmm "$(fl_cpu "$b")" 2); $(mmm "$(fl_cpu "$f")" 2); $(mmm "$(fl_cpu "$mm")" 2) |"
    done
  fi
  echo
  echo "## Commands"
  echo
  echo '```sh'
  echo "bash benches/run.sh                      # this report"
  echo "$BUILD_CMD"
  echo "# servers: taskset -c $CORE_SRV; generators: taskset -c $CORE_GEN"
  echo "meterd serve --config <tmp>/meterd.toml  # durability fsync|buffered, flush_interval 1s, lateness 1h"
  echo "baseline 127.0.0.1:0                     # target/release/examples/baseline"
  echo "baseline 127.0.0.1:0 --durable buffered|fsync --data DIR   # the durable floor"
  echo "loadgen run --url URL --key KEY --conns $C_T1 --body single --warmup $WARMUP_SECONDS --duration $ROUND_SECONDS   # T1 (and B64)"
  echo "loadgen run --url URL --key KEY --conns $C_T2 --body single ...                                # T2 (and B256)"
  echo "loadgen run --url URL --key KEY --conns $C_BATCH --body batch --events 1000 [--contract-prefix bench-q] ... # T3/T4"
  echo "loadgen run --url URL --key KEY --conns $C_T2 --body single --rate ${T5_RATE:-R} --duration $LAT_SECONDS \\"
  echo "  --flush-pid PID --side-path /v1/contracts/bench-q0/balance --side-rate $SIDE_RATE --side-conns $SIDE_CONNS  # T5/T6"
  echo "${PG_CMD:-pgbench -n -M prepared -c $C_T2 -j 1 -T $ROUND_SECONDS -f event.sql}"
  echo "${REDIS_CMD:-redis-benchmark ... EVALSHA ...}"
  echo "valgrind --tool=callgrind meterd serve ...; callgrind_control -z PID; loadgen --requests N1; callgrind_control -d PID; loadgen --requests N2; callgrind_control -d PID"
  echo "$MICRO_CMD"
  echo '```'
  echo
  echo "Events are \`{\"id\":\"<run prefix>-<13-digit event number>\",\"contract\":\"bench-c<k>\",\"lever\":\"$LEVER\",\"value\":1}\`,"
  echo "k round robin over $CONTRACTS contracts, every id distinct; the baseline gets byte-identical requests"
  echo "(including the Authorization header). PostgreSQL runs \`max_connections=$((C_T2 + 20))\`, \`shared_buffers=256MB\`,"
  echo "\`synchronous_commit=on\`, \`fsync=on\`, defaults otherwise; each pgbench transaction is:"
  echo
  echo '```sql'
  if [ -f "$RES/event.sql" ]; then sed 's/\\\\/\\/' "$RES/event.sql"; fi
  echo '```'
  echo
  echo "Redis runs \`appendonly yes\`, \`appendfsync everysec\`, no RDB snapshots; each request is one"
  echo "EVALSHA of: \`if redis.call('SET', KEYS[1], '1', 'NX', 'EX', 3024000) then local t = redis.call('TIME');"
  echo "return redis.call('HINCRBY', KEYS[2], tostring(t[1] - t[1] % 60), 1) end return 0\`."
  echo
  # rounds_table RESULTS SORTED: the per-run table of throughput-style results (rows sorted
  # by round into SORTED, with the server CPU per event derived).
  rounds_table() {
    echo "| round | config | req/s | 2xx events/s | p50 ms | p99 ms | generator CPU % | server CPU % | server CPU µs per event | checks | meterd histograms (means over the run) |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    sort -t$'\t' -k1,1n -s "$1" | awk -F'\t' -v OFS='\t' '{ print $1, $2, $3, $4, $5, $6, $7, $8,
      ($8 != "" && $4 > 0) ? sprintf("%.2f", $8 * 10000 / $4) : "", $9, $10 }' >"$2"
    tsv_table "$2" s s 0 0 s s s s s s s
  }
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
  if [ -s "$PROF" ]; then
    echo "### Profile (callgrind)"
    echo
    echo "User-space instructions (Ir) per event under callgrind, all threads of the server, from two"
    echo "windows of N1 and N2 requests after a warm-up (\`callgrind_control -z\`, then \`-d\` after each"
    echo "window): (I2 - I1) / (N2 - N1) / events per request. Single events over 8 connections,"
    echo "1,000-event batches over 4. Kernel work (syscalls, TCP, fsync) is not counted."
    echo
    echo "| run | N1 requests | I1 | N2 requests | I2 | events per request | Ir per event | checks |"
    echo "|---|---|---|---|---|---|---|---|"
    tsv_table "$PROF" s 0 0 0 0 0 0 s
    echo
    for kind in fsync buffered fsync-batch fsync-batch-quota; do
      [ -s "$RES/cg-$kind-inclusive.txt" ] || continue
      echo "Top-10 inclusive costs, meterd $kind, window N2 (\`callgrind_annotate --inclusive=yes\`;"
      echo "thread and tokio scheduler frames, which include everything, left out; % of all Ir):"
      echo
      echo '```'
      { grep -Ev "$WRAPPERS" "$RES/cg-$kind-inclusive.txt" || true; } | awk 'NR <= 10'
      echo '```'
      echo
      echo "Top-15 self costs, meterd $kind (\`callgrind_annotate\`; the same frames left out: the"
      echo "dump charges frames still open at the dump with their open calls):"
      echo
      echo '```'
      { grep -Ev "$WRAPPERS" "$RES/cg-$kind-self.txt" || true; } | awk 'NR <= 15'
      echo '```'
      echo
    done
  fi
  if [ -s "$MICRO" ]; then
    echo "### Micro-benchmarks (criterion, median)"
    echo
    echo "\`$MICRO_CMD\`, pinned to CPU $CORE_SRV. \`parse/*\` parse the same bodies into meterd's \`Event\`"
    echo "four ways (see benches/README.md); per-element times divide by the events per body."
    echo
    echo "| bench | median | per element | elements/s |"
    echo "|---|---|---|---|"
    while IFS=$'\t' read -r id el med; do
      awk -v id="$id" -v el="$el" -v m="$med" "$AWK_FMT"'
        function t(ns) { return ns >= 1e6 ? sprintf("%.2f ms", ns / 1e6) : ns >= 1e3 ? sprintf("%.2f µs", ns / 1e3) : sprintf("%.1f ns", ns) }
        BEGIN { printf "| %s | %s | %s | %s |\n", id, t(m), t(m / el), fmt(el * 1e9 / m, 0) }'
    done <"$MICRO"
    echo
    echo "Fastest parser per shape:"
    echo
    for shape in single single_full batch_1000; do
      awk -F'\t' -v s="$shape" '$1 ~ "^parse/.*/" s "$" { split($1, p, "/"); v[p[2]] = $3 / $2 }
        END { best = ""; for (k in v) if (best == "" || v[k] < v[best]) best = k
              if (best == "") exit
              printf "- %s: **%s**, %.0f ns per event (serde_json_meterd %.0f ns, simd_json_tape %.0f ns, simd_json_value %.0f ns, serde_json_one_pass %.0f ns)\n",
                s, best, v[best], v["serde_json_meterd"], v["simd_json_tape"], v["simd_json_value"], v["serde_json_one_pass"] }' "$MICRO"
    done
    echo
  fi
  if [ -f "$BENCH_DIR/analysis.md" ]; then
    echo "## Analysis"
    echo
    echo "(Hand-written in benches/analysis.md from the figures of a full run; the tables above are"
    echo "regenerated by every run.)"
    echo
    sed '1{/^# /d}; s/^## /### /' "$BENCH_DIR/analysis.md"
  fi
} >"$OUT"
if [ -z "$REPORT_FROM" ]; then
  KEPT=$CARGO_TARGET_DIR/bench-results
  rm -rf "$KEPT"
  cp -r "$RES" "$KEPT"
  log "raw outputs (loadgen, pgbench, callgrind dumps, criterion) kept in $KEPT"
fi
log "done in $((ELAPSED_S / 60)) min $((ELAPSED_S % 60)) s; report: $OUT"
