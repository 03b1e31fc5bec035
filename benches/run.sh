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
#  8b. cluster mode: a 3-node cluster (3 NATS + 3 meterd from scripts/cluster.sh, on this
#     machine) against a single node, same generator, alternating rounds of single events
#     and 1,000-event batches; publish-ack latency; takeover time after kill -9 of a node;
#  9. writes the report: machine, commands, summary table, raw figures, profile, micro,
#     and benches/analysis.md (hand-written reading of the figures) at the end.
#
# Environment (defaults for the full run; QUICK=1 shrinks them):
#   ROUNDS=5 ROUND_SECONDS=5 WARMUP_SECONDS=1 LAT_ROUNDS=3 LAT_SECONDS=8 SETTLE_MAX=300
#   T7_CONTRACTS=100 T7_BUCKETS=100 T7_MINUTES=100 (1,000,000 keys) T7_IDS=10000000
#   T7_IDS_CONFIG= (extra TOML lines for the ids daemon, e.g. a smaller memory_limit)
#   T8_EVENTS=1000000 CG_N1=500 CG_N2=1500
#   CORE_GEN=0 CORE_SRV=1 PHASES="throughput latency floor memory restart profile micro cluster"
#   CLUSTER_PARTITIONS=12 CLUSTER_RATE=500 TAKEOVERS=3
#   OUT=<repo>/BENCHMARKS.md RUN_NOTE="" KEEP_TMP=0 METERD=<target>/release/meterd
#   LAT_SPANS= (1: each latency round also writes lat-R-W.spans.tsv, intended send time in
#   unix µs and latency in µs per request, to place the tail against the server logs)
#   CARGO_TARGET_DIR=$HOME/.cache/meterd/target
#
# Layout: this file is the driver (environment, phase selection and order, the report's
# assembly). It sources benches/lib/*.sh (helpers the phases share: servers, loadgen,
# peers, statistics), benches/phases/<phase>.sh (one file per phase, each defining
# phase_<phase>) and benches/report/*.sh (the report's sections, report_*). The sourced
# files define functions and constants; nothing runs until this file calls it.
set -euo pipefail
shopt -s inherit_errexit

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  : "${ROUNDS:=3}" "${ROUND_SECONDS:=1}" "${LAT_ROUNDS:=2}" "${LAT_SECONDS:=2}"
  : "${T7_CONTRACTS:=10}" "${T7_BUCKETS:=100}" "${T7_MINUTES:=100}" "${T7_IDS:=500000}"
  : "${T8_EVENTS:=100000}" "${CG_N1:=100}" "${CG_N2:=300}" "${TAKEOVERS:=1}"
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
TAKEOVERS=${TAKEOVERS:-3}
CORE_GEN=${CORE_GEN:-0}
CORE_SRV=${CORE_SRV:-1}
PHASES=${PHASES:-throughput latency floor memory restart profile micro cluster}
CLUSTER_PARTITIONS=${CLUSTER_PARTITIONS:-12}
CLUSTER_RATE=${CLUSTER_RATE:-500}
CLUSTER_DIR=""
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
# T5's rate, set by the latency phase from T2's median, for the report.
T5_RATE=""
# REPORT_FROM=DIR: no measurement, only the report, from the results of an earlier run
# kept in DIR (e.g. $CARGO_TARGET_DIR/bench-results after editing benches/analysis.md).
REPORT_FROM=${REPORT_FROM:-}

# The helpers every phase uses, one file per phase, then the report's sections (sourced
# here at the top level, so that their globals stay global).
for src in lib/{common,packages,probes,procs,meterd,metrics,loadgen,stats,peers}.sh \
  phases/{throughput,latency,floor,memory,restart,profile,micro,cluster}.sh \
  report/{header,summary,commands,raw,profile,micro,cluster}.sh; do
  # shellcheck disable=SC1090
  . "$BENCH_DIR/$src"
done

case $ROUND_SECONDS in '' | *[!0-9]*) die "ROUND_SECONDS must be a whole number of seconds" ;; esac
[ "$ROUNDS" -ge 1 ] || die "ROUNDS must be at least 1"
STARTED_S=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# --- 1. packages ------------------------------------------------------------------------
install_packages
setup_pinning

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
# Every server the run starts, by name: its pid, API address and metrics address (the
# EXIT trap, cleanup in lib/procs.sh, kills what is left in PID).
declare -A PID API MET
PG_DATA=""
REDIS_PID=""
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

DSYNC_START=$([ -n "$REPORT_FROM" ] || fsync_probe "$TMP")
KEY="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
KEY_SHA=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)

# --- result files -----------------------------------------------------------------------
TP=$RES/throughput.tsv # round name req/s events/s p50 p99 gen% srv% check [histograms]
LAT=$RES/latency.tsv
LATDB=$RES/latency-rocksdb.tsv
FL=$RES/floor.tsv
MEM=$RES/memory.tsv
RST=$RES/restart.tsv
PROF=$RES/profile.tsv
MICRO=$RES/micro.tsv
CL=$RES/cluster.tsv # the cluster phase's rounds, as $TP's
truncate_results "$TP" "$LAT" "$LATDB" "$RES/lat-windows.tsv" "$FL" "$MEM" "$RST" "$PROF" "$MICRO" "$CL"

# --- 3.-9. the phases, in this order whatever the order in PHASES -----------------------
# The throughput, latency and floor phases share one meterd fsync, one buffered and the
# baseline: T5 meets the daemon the throughput rounds left, and the floor rounds run after
# the latency rounds so that this stays so.
if has_phase throughput || has_phase latency || has_phase floor; then
  start_shared_servers
fi
if has_phase throughput; then phase_throughput; fi
if has_phase latency; then phase_latency; fi
if has_phase floor; then phase_floor; fi
stop_shared_servers
if has_phase memory; then phase_memory; fi
if has_phase restart; then phase_restart; fi
if has_phase profile; then phase_profile; fi
if has_phase micro; then phase_micro; fi
if has_phase cluster; then phase_cluster; fi

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
    MICRO_CMD CORE_GEN CORE_SRV SETTLE_SECS CLUSTER_PARTITIONS CLUSTER_RATE TAKEOVERS 2>/dev/null >"$RES/meta.env" || true
else
  # shellcheck disable=SC1091
  . "$RES/meta.env"
  [ -z "${RUN_NOTE_OVERRIDE:-}" ] || RUN_NOTE=$RUN_NOTE_OVERRIDE
fi
log "writing $OUT"
{
  report_header
  report_summary
  report_cpu_per_event
  report_floor
  report_commands
  report_raw
  report_profile
  report_micro
  report_cluster
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
