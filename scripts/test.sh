#!/usr/bin/env bash
# Runs the whole test suite (unit, property and black-box integration tests against the
# real daemon) in the release profile, installing build prerequisites when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo test --release --all-targets "$@"
