# shellcheck shell=bash
# Sourced by benches/run.sh: logging, phase selection and the key=value parsing every
# other file uses.

log() { printf '==> [%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf 'run.sh: %s\n' "$*" >&2
  exit 1
}
# has_phase NAME: NAME is in PHASES (never in REPORT_FROM mode, which measures nothing).
has_phase() { [ -z "$REPORT_FROM" ] && [[ " $PHASES " == *" $1 "* ]]; }
# truncate FILE...: empties result files (never in REPORT_FROM mode).
truncate_results() { [ -n "$REPORT_FROM" ] || for f in "$@"; do : >"$f"; done; }
# kv KEY LINE: the value of KEY=value in a line such as loadgen's "LOADGEN key=value ...".
kv() { sed -n "/ $1=/{s/.* $1=\([^ ]*\).*/\1/p;q}" <<<"$2"; }
