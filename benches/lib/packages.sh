# shellcheck shell=bash
# Sourced by benches/run.sh: what the harness needs besides the build (apt-get when
# missing) and the CPU pinning of servers and generators.

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }
# install_packages: installs what is missing with apt-get (apt-get update first, only
# when something is missing); sets PGBIN.
install_packages() {
  local missing=() t
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
}
# setup_pinning: PIN_GEN and PIN_SRV (taskset prefixes for the generators and the
# servers), empty on one CPU.
setup_pinning() {
  NCPU=$(nproc)
  PIN_GEN=(taskset -c "$CORE_GEN")
  PIN_SRV=(taskset -c "$CORE_SRV")
  if [ "$NCPU" -lt 2 ]; then
    log "only $NCPU CPU: generator and servers cannot be pinned apart; pinning disabled"
    PIN_GEN=()
    PIN_SRV=()
  fi
}
pin_gen() { "${PIN_GEN[@]}" "$@"; }
pin_srv() { "${PIN_SRV[@]}" "$@"; }
