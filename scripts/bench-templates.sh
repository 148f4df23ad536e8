#!/usr/bin/env bash
# Template benchmarks, each next to its reference measured in the same run (as root):
#  1. pull + unpack throughput: `hearth template build` from a loopback registry (fresh layer
#     store) next to `skopeo copy` + `umoci unpack` of the same image;
#  2. create -> exec true -> rm p50 from a cached template next to the default view.
# The image is made here: busybox plus copies of the host's Python, Perl and GCC files
# (~200 MB unpacked), so the figures move real bytes. Needs: docker-registry skopeo umoci busybox (setup-host.sh).
set -euo pipefail
shopt -s inherit_errexit  # a failed cycle inside $(...) stops the run: no figures from failures

HEARTH=${HEARTH:-${CARGO_TARGET_DIR:-/var/tmp/hearth-target}/release/hearth}
RUNS=${RUNS:-15}
work=$(mktemp -d /var/tmp/hearth-bench-tpl.XXXXXX)
# The sandboxes' own uids must pass through to their runtime dir (hearth refuses otherwise).
chmod 0711 "$work"
cleanup() {
    [[ -n ${registry_pid:-} ]] && kill "$registry_pid" 2>/dev/null || true
    HEARTH_STATE_DIR=$work/state HEARTH_RUNTIME_DIR=$work/run "$HEARTH" template rm bench >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
export HEARTH_STATE_DIR=$work/state HEARTH_RUNTIME_DIR=$work/run

cd "$work"
umoci init --layout img >/dev/null
umoci new --image img:1 >/dev/null
umoci unpack --image img:1 b >/dev/null
mkdir -p b/rootfs/bin b/rootfs/usr/lib b/rootfs/usr/share
cp "$(command -v busybox)" b/rootfs/bin/busybox
for t in sh true ls; do ln -s busybox "b/rootfs/bin/$t"; done
# Real files of several kinds and sizes (~200 MB unpacked): Python's stdlib, Perl, GCC's.
cp -a /usr/lib/python3.11 /usr/lib/gcc b/rootfs/usr/lib/
cp -a /usr/share/perl b/rootfs/usr/share/
umoci repack --image img:1 b >/dev/null
rm -rf b
size=$(du -sb img | cut -f1)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >reg.yml <<EOF
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/reg}}
http: {addr: 127.0.0.1:$port}
EOF
docker-registry serve reg.yml >/dev/null 2>&1 &
registry_pid=$!
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
skopeo copy -q oci:img:1 "docker://127.0.0.1:$port/bench:1" --dest-tls-verify=false

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }

t0=$(now)
"$HEARTH" template build bench --from "127.0.0.1:$port/bench:1" --plain-http >/dev/null 2>&1
t1=$(now)
skopeo copy -q "docker://127.0.0.1:$port/bench:1" oci:ref:1 --src-tls-verify=false
umoci unpack --image ref:1 refbundle >/dev/null
t2=$(now)
hearth_s=$(elapsed "$t0" "$t1")
ref_s=$(elapsed "$t1" "$t2")
mib=$(python3 -c "print(f'{$size/1048576:.1f}')")
unpacked=$(du -sb refbundle/rootfs | cut -f1)
echo "pull+unpack of an image of $mib MiB compressed, $(python3 -c "print(f'{$unpacked/1048576:.0f}')") MiB unpacked (MiB/s of compressed bytes):"
echo "  hearth template build        ${hearth_s} s  ($(python3 -c "print(f'{$size/1048576/$hearth_s:.0f}')") MiB/s)"
echo "  skopeo copy + umoci unpack   ${ref_s} s  ($(python3 -c "print(f'{$size/1048576/$ref_s:.0f}')") MiB/s)"

cycle() {
    local extra=("$@") times=()
    for i in $(seq "$RUNS"); do
        local s e
        s=$(now)
        "$HEARTH" sandbox create --id "bench-tpl-$i" "${extra[@]}" >/dev/null
        "$HEARTH" sandbox exec "bench-tpl-$i" -- true
        "$HEARTH" sandbox rm "bench-tpl-$i" >/dev/null
        e=$(now)
        times+=("$(elapsed "$s" "$e")")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]*1000}'
}
default_ms=$(cycle)
template_ms=$(cycle --template bench)
echo "create -> exec true -> rm, p50 of $RUNS:"
echo "  default view (host /usr)     ${default_ms} ms"
echo "  cached template              ${template_ms} ms  ($(python3 -c "print(f'{$template_ms/$default_ms:.2f}')")x)"
