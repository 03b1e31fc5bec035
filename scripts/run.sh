#!/usr/bin/env bash
# Quick start: installs build prerequisites, builds meterd (release) and runs it on the
# shipped default config (config/meterd.toml: RocksDB under ./data, development keys).
# Extra arguments go to `meterd serve`, e.g. `scripts/run.sh --listen 0.0.0.0:8080`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --bin meterd
exec "$CARGO_TARGET_DIR/release/meterd" serve --config config/meterd.toml "$@"
