#!/usr/bin/env bash
# Installs what hearth and its tests need on a fresh Debian machine (run as root).
# Safe to run again: apt-get and pip skip what is already installed.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "setup-host.sh: run as root (apt-get, namespaces and cgroups need it)" >&2
    exit 1
fi

# e2fsprogs (mke2fs, debugfs): private workspace filesystems, and with cpio the guest image
# build and its tests; qemu-system-x86:
# booting it; binutils (strip) shrinks the static hearth-guest the image carries.
# Template tests: a real registry (docker-registry, with apache2-utils' htpasswd for its
# auth), images made with umoci and copied with skopeo, busybox-static as their only binary.
packages=(runc nftables iproute2 python3 python3-venv libseccomp-dev pkg-config curl e2fsprogs cpio qemu-system-x86 binutils
    docker-registry skopeo umoci busybox-static apache2-utils)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup-host.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
