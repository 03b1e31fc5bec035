#!/usr/bin/env bash
# Runs the whole test suite (unit, property and black-box integration tests against the
# real daemon, plus one quick pass over each criterion benchmark) in the release
# profile, installing build prerequisites when missing. Ends with a one-line summary.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --all-targets "$@" 2>&1 | tee "$log" || status=$?
bash scripts/fuzz.sh 2>&1 | tee -a "$log" || status=$? # bounded fuzzing (fuzz/README.md)
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
