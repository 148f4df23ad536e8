#!/usr/bin/env bash
# E2B's official Python SDK against hearth serve: the newest pinned version and an older minor,
# each in a virtualenv of its own (outside the clone), then the tests for each. Needs the hearth
# binaries built (scripts/test.sh builds them first). Run as root, like the rest of the suite.
set -euo pipefail
cd "$(dirname "$0")"

# Both pins are tested: a version string is not a compatibility signal.
SDK_VERSIONS=(2.63.0 2.40.0)
VENV_ROOT="${HEARTH_VENV_DIR:-/var/tmp/hearth-venvs}"

for version in "${SDK_VERSIONS[@]}"; do
    venv="$VENV_ROOT/e2b-$version"
    if [[ ! -x "$venv/bin/python" ]]; then
        python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "e2b==$version" "pytest>=8"
    echo "== e2b SDK $version against hearth serve" >&2
    "$venv/bin/python" -m pytest -q -p no:cacheprovider tests
done
