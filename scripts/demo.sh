#!/usr/bin/env bash
# The demo job on a fresh machine: set up the host, build hearth, then create a sandbox, run a
# small test suite inside it against a workspace from the host, copy the result out and remove
# the sandbox. (The agent task runner, `hearth run`, builds on this; see issue 5.)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-host.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/hearth-target}"
echo "demo: building hearth (release)..." >&2
cargo build --release --quiet -p hearth -p hearth-guest
hearth="$CARGO_TARGET_DIR/release/hearth"

workspace=$(mktemp -d)
trap 'rm -rf "$workspace"' EXIT
cat > "$workspace/test_math.py" <<'PY'
import unittest

class MathTest(unittest.TestCase):
    def test_add(self):
        self.assertEqual(1 + 1, 2)

if __name__ == "__main__":
    unittest.main()
PY

"$hearth" doctor || true
id=$("$hearth" sandbox create --memory 256M --cpus 1 --pids 128 --workspace "$workspace")
echo "demo: created sandbox $id" >&2
cleanup() { "$hearth" sandbox rm "$id" >/dev/null 2>&1 || true; rm -rf "$workspace"; }
trap cleanup EXIT

"$hearth" sandbox exec "$id" -- sh -c 'echo "inside: pid1=$(cat /proc/1/comm) host=$(hostname) caps=$(grep CapEff /proc/self/status | cut -f2)"'
"$hearth" sandbox exec "$id" --timeout 60 -- sh -c 'cd /workspace && python3 -m unittest -v 2> result.txt; tail -1 result.txt'
"$hearth" sandbox cp "$id:/workspace/result.txt" "$workspace/copied-out.txt"
echo "demo: copied the result out: $(tail -1 "$workspace/copied-out.txt")" >&2
"$hearth" sandbox ls
"$hearth" sandbox rm "$id"
echo "demo: removed $id" >&2
