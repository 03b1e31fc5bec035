#!/usr/bin/env bash
# Builds meterd's fuzz targets (fuzz/: libFuzzer through libfuzzer-sys, on stable Rust)
# and runs each for a bounded time; part of scripts/test.sh, so of CI. Exits non-zero
# when a target crashes (panic, failed invariant), hangs (-timeout) or runs out of
# memory (-rss_limit_mb, and a 64 MiB cap on single allocations in fuzz/src/lib.rs).
#
#   scripts/fuzz.sh                      build, then run every target for FUZZ_SECONDS
#   scripts/fuzz.sh build                build only
#   scripts/fuzz.sh repro TARGET FILE..  run TARGET once on each FILE (with a backtrace)
#
# Environment (see fuzz/README.md):
#   FUZZ_SECONDS   seconds per target (default 20); 0: only run the seeds and
#                  regressions once each
#   FUZZ_TARGETS   targets to run (default: all)
#   FUZZ_JOBS      targets run at once (default: number of cores, at most 2)
#   FUZZ_CORPUS    directory of persistent corpora (default: a temporary one, so the
#                  committed seeds in fuzz/corpus/ never change)
#   FUZZ_ARGS      extra libFuzzer flags, e.g. "-use_value_profile=1"
#   METERD_FUZZ=0  skip everything (scripts/test.sh then runs no fuzzing)
#
# RocksDB is not compiled again: the fuzz build links the librocksdb.a of the main
# release build (debug info stripped), which it builds first if missing. The fuzz
# build has its own target dir, $CARGO_TARGET_DIR/fuzz, kept between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${METERD_FUZZ:-1}" = 0 ]; then
  echo "fuzz: skipped (METERD_FUZZ=0)"
  exit 0
fi
source scripts/env.sh

ALL_TARGETS="event_native event_ndjson cloudevents query path decimal"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
FUZZ_TARGETS="${FUZZ_TARGETS:-$ALL_TARGETS}"
cores=$(nproc 2>/dev/null || echo 1)
FUZZ_JOBS="${FUZZ_JOBS:-$((cores < 2 ? cores : 2))}"
FUZZ_ARGS="${FUZZ_ARGS:-}"

# Per target: longest input (bytes) and dictionary.
max_len() {
  case "$1" in
    event_native | event_ndjson | cloudevents) echo 16384 ;;
    query) echo 10000 ;;
    path) echo 1024 ;;
    decimal) echo 256 ;;
    *) echo "fuzz: unknown target $1 (targets: $ALL_TARGETS)" >&2; return 1 ;;
  esac
}
dict() {
  case "$1" in
    event_native | event_ndjson) echo fuzz/dict/json.dict ;;
    *) echo "fuzz/dict/$1.dict" ;;
  esac
}

fuzz_dir="$CARGO_TARGET_DIR/fuzz"
host=$(rustc -vV | sed -n 's/^host: //p')
bin_dir="$fuzz_dir/$host/release"

build() {
  local started=$SECONDS
  # The prebuilt RocksDB of the main release build (building it is what takes long).
  local lib
  # shellcheck disable=SC2012 # newest first; cargo's own paths, no odd names
  lib=$(ls -t "$CARGO_TARGET_DIR"/release/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null | head -1 || true)
  if [ -z "$lib" ]; then
    echo "fuzz: no librocksdb.a yet; building meterd in release first" >&2
    cargo build --release --lib
    # shellcheck disable=SC2012
    lib=$(ls -t "$CARGO_TARGET_DIR"/release/build/librocksdb-sys-*/out/librocksdb.a | head -1)
  fi
  # A copy without debug info: 45 MB instead of 1.5 GB, so each target links in seconds.
  local rocks="$fuzz_dir/rocksdb-lib"
  local stamp
  stamp="$lib $(stat -c '%s %Y' "$lib")"
  if [ ! -f "$rocks/librocksdb.a" ] || [ "$(cat "$rocks/source" 2>/dev/null)" != "$stamp" ]; then
    mkdir -p "$rocks"
    rm -f "$rocks/source"
    if command -v objcopy >/dev/null 2>&1; then
      objcopy --strip-debug "$lib" "$rocks/librocksdb.a.tmp"
    else
      cp "$lib" "$rocks/librocksdb.a.tmp"
    fi
    mv "$rocks/librocksdb.a.tmp" "$rocks/librocksdb.a"
    echo "$stamp" >"$rocks/source"
  fi
  # Same dependency versions as the main build (librocksdb-sys above all: its bindings
  # must match the library). Cargo adds the fuzz-only crates to the copy.
  if [ ! -f fuzz/Cargo.lock ] || [ Cargo.lock -nt fuzz/Cargo.lock ]; then
    cp Cargo.lock fuzz/Cargo.lock
  fi
  # cargo-fuzz's instrumentation (SanitizerCoverage for libFuzzer), without a
  # sanitizer so that stable Rust builds it; debug assertions and overflow checks on.
  # Only for the target triple: build scripts and proc macros stay uninstrumented.
  local flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
  flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
  flags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
  flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares"
  flags+=" -Cllvm-args=-sanitizer-coverage-stack-depth"
  flags+=" --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
  CARGO_TARGET_DIR="$fuzz_dir" ROCKSDB_LIB_DIR="$rocks" ROCKSDB_STATIC=1 RUSTFLAGS="$flags" \
    cargo build --manifest-path fuzz/Cargo.toml --release --target "$host" --bins
  echo "fuzz: built in $((SECONDS - started)) s ($bin_dir)"
}

case "${1:-run}" in
  build)
    build
    exit 0
    ;;
  repro)
    [ $# -ge 3 ] || { echo "usage: scripts/fuzz.sh repro TARGET FILE..." >&2; exit 2; }
    target=$2
    shift 2
    build >&2
    RUST_BACKTRACE=1 "$bin_dir/$target" -rss_limit_mb=1024 -timeout=10 "$@"
    exit $?
    ;;
  run) ;;
  *)
    echo "usage: scripts/fuzz.sh [run | build | repro TARGET FILE...]" >&2
    exit 2
    ;;
esac

build
for t in $FUZZ_TARGETS; do
  max_len "$t" >/dev/null
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p fuzz/artifacts

# One target: writes $work/$t.log and $work/$t.rc.
run_one() {
  local t=$1 corpus
  if [ -n "${FUZZ_CORPUS:-}" ]; then
    corpus="$FUZZ_CORPUS/$t"
  else
    corpus="$work/corpus-$t"
  fi
  mkdir -p "$corpus"
  local seeds=("fuzz/corpus/$t")
  # Reproducers of known, not yet fixed bugs (fuzz/README.md): run first, every time.
  [ -d "fuzz/regressions/$t" ] && seeds+=("fuzz/regressions/$t")
  local budget=(-max_total_time="$FUZZ_SECONDS")
  [ "$FUZZ_SECONDS" = 0 ] && budget=(-runs=0)
  local rc=0
  # The outer timeout only guards against libFuzzer itself never returning.
  # shellcheck disable=SC2086
  RUST_BACKTRACE=1 timeout -k 10 $((FUZZ_SECONDS + 300)) "$bin_dir/$t" "$corpus" "${seeds[@]}" \
    "${budget[@]}" -max_len="$(max_len "$t")" -dict="$(dict "$t")" \
    -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t-" $FUZZ_ARGS >"$work/$t.log" 2>&1 || rc=$?
  echo "$rc" >"$work/$t.rc"
}

budget_text="for ${FUZZ_SECONDS} s each"
[ "$FUZZ_SECONDS" = 0 ] && budget_text="on their seeds only"
echo "fuzz: running ${FUZZ_TARGETS// /, } ${budget_text}, ${FUZZ_JOBS} at a time"
started=$SECONDS
running=0
for t in $FUZZ_TARGETS; do
  if [ "$running" -ge "$FUZZ_JOBS" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  run_one "$t" &
  running=$((running + 1))
done
wait || true

passed=0
failed=0
for t in $FUZZ_TARGETS; do
  rc=$(cat "$work/$t.rc" 2>/dev/null || echo 1)
  stats=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$work/$t.log" | tail -1 |
    sed -E 's/^#([0-9]+)[[:space:]]+DONE[[:space:]]+/runs: \1 /; s/[[:space:]]+lim: [0-9]+//' || true)
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1))
    echo "fuzz $t: ok   $stats"
  else
    failed=$((failed + 1))
    echo "fuzz $t: FAILED (exit $rc)"
    echo "----- last lines of the $t log -----"
    tail -n 80 "$work/$t.log"
    echo "----- reproduce: scripts/fuzz.sh repro $t fuzz/artifacts/$t-<kind>-<sha1> (input above, in base64) -----"
  fi
done
# In cargo test's format, so that scripts/test.sh counts the targets in its summary.
echo "test result: $([ "$failed" = 0 ] && echo ok || echo FAILED). ${passed} passed; ${failed} failed; 0 ignored; 0 measured; 0 filtered out; finished in $((SECONDS - started)).00s"
[ "$failed" = 0 ]
