# Sourced by the other scripts: installs the build prerequisites when missing and
# points cargo at a target dir outside the clone, so RocksDB (compiled from source,
# 20-40 minutes on 2 cores) is built once and reused by later runs and CI.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/meterd/target}"
mkdir -p "$CARGO_TARGET_DIR"

meterd_need=()
command -v clang >/dev/null 2>&1 || meterd_need+=(clang)
dpkg -s libclang-dev >/dev/null 2>&1 || meterd_need+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || meterd_need+=(g++)
if [ "${#meterd_need[@]}" -gt 0 ]; then
  echo "meterd: installing build prerequisites: ${meterd_need[*]}" >&2
  meterd_sudo=""
  [ "$(id -u)" -ne 0 ] && meterd_sudo="sudo"
  $meterd_sudo apt-get update -qq
  $meterd_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${meterd_need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "meterd: cargo (Rust 1.88 or newer) is required; install it with rustup" >&2
  exit 1
fi
