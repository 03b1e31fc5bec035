#!/usr/bin/env bash
# Installs the pinned schemathesis (requirements.txt beside this file) into a Python venv,
# once: a marker file in the venv holds the SHA-256 of requirements.txt, so the venv is
# reused until a pin changes. Concurrent runs wait on a lock file.
#
#   METERD_SCHEMATHESIS_VENV  venv directory (default ~/.cache/meterd/pyenv-schemathesis)
#   METERD_PYTHON             interpreter that creates it (default python3; 3.10 or newer)
#
# Prints the venv's schemathesis version on success; exits non-zero with the reason
# otherwise.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${METERD_SCHEMATHESIS_VENV:-$HOME/.cache/meterd/pyenv-schemathesis}
python=${METERD_PYTHON:-python3}
req="$here/requirements.txt"
want=$(sha256sum "$req" | cut -d' ' -f1)
marker="$venv/.meterd-requirements.sha256"

mkdir -p "$(dirname "$venv")"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$venv.lock"
    flock 9
fi

if [[ -f $marker && $(cat "$marker") == "$want" && -x $venv/bin/schemathesis ]]; then
    "$venv/bin/schemathesis" --version
    exit 0
fi

if ! command -v "$python" >/dev/null 2>&1; then
    echo "install.sh: no Python interpreter \`$python\` (set METERD_PYTHON)" >&2
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
    echo "install.sh: $("$python" --version 2>&1) is too old; schemathesis needs Python 3.10+" >&2
    exit 1
fi
echo "install.sh: creating $venv with $("$python" --version 2>&1)" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet -r "$req"
"$venv/bin/schemathesis" --version
echo "$want" >"$marker"
