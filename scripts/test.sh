#!/usr/bin/env bash
# The whole test suite, from a fresh machine: host packages, Python test tools, Rust lints,
# then every test (Rust against real runc, nftables and namespaces; the Python agent).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-host.sh
python3 -m pip install --quiet --disable-pip-version-check -r agent/requirements-test.txt

# Keep build outputs outside the clone so repeated runs are incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/hearth-target}"
export CARGO_TERM_COLOR=never

echo "== rust: fmt, clippy, build" >&2
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The CLI tests run the hearth-guest binary, so build every binary first.
cargo build --workspace --bins --quiet
# The microVM guest image carries a static hearth-guest (its own target dir under the same root).
RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --quiet -p hearth-guest --target x86_64-unknown-linux-gnu

echo "== rust: tests" >&2
cargo test --workspace --no-fail-fast

echo "== e2b compatibility: the official SDK (two versions) against hearth serve" >&2
(cd compat/e2b && python3 -m ruff check . && python3 -m ruff format --check . && bash run.sh)

echo "== agent: ruff, mypy, pytest" >&2
(cd agent && python3 -m ruff check . && python3 -m ruff format --check . && python3 -m mypy && python3 -m pytest -q)
