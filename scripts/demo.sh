#!/usr/bin/env bash
# hearth's main job on a fresh machine: set up the host, build hearth, then run an agent task
# in a sandbox. With no model endpoint configured (OPENAI_BASE_URL / OPENAI_API_KEY), hearth
# uses its scripted upstream, which replays the turns of a model fixing a failing unit test in
# a small demo workspace, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-host.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/hearth-target}"
echo "demo: building hearth (release)..." >&2
cargo build --release --quiet -p hearth -p hearth-guest
hearth="$CARGO_TARGET_DIR/release/hearth"

"$hearth" doctor || true
"$hearth" run "Make the failing test pass." "$@"
