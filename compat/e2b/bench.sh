#!/usr/bin/env bash
# The E2B benchmark (see bench.py) with the newest pinned SDK. Run as root after building hearth.
set -euo pipefail
cd "$(dirname "$0")"
version=2.63.0
venv="${HEARTH_VENV_DIR:-/var/tmp/hearth-venvs}/e2b-$version"
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "e2b==$version"
# Figures are for the release build (cargo build --release -p hearth -p hearth-guest).
target="${CARGO_TARGET_DIR:-/var/tmp/hearth-target}"
if [[ ! -x "$target/release/hearth" || ! -x "$target/release/hearth-guest" ]]; then
    echo "bench.sh: build the release binaries first: cargo build --release -p hearth -p hearth-guest" >&2
    exit 2
fi
export HEARTH_BIN="$target/release/hearth" HEARTH_GUEST_BIN="$target/release/hearth-guest"
exec "$venv/bin/python" bench.py "$@"
