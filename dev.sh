#!/usr/bin/env bash
# Set up a fresh Debian 12 machine for snaptree and run the demo, the tests
# or the benchmarks.  Usage: ./dev.sh setup|demo|test|bench [args...]
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
DEB_PACKAGES=(qemu-utils qemu-system-x86 btrfs-progs lvm2 kpartx busybox-static
              snapper linux-image-amd64 util-linux e2fsprogs fdisk)

setup() {
    local missing=()
    for pkg in "${DEB_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        if [[ $(id -u) -ne 0 ]]; then
            echo "dev.sh: need root to install: ${missing[*]}" >&2; exit 1
        fi
        echo "dev.sh: installing Debian packages: ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[test,bench,guest]"
}

case "${1:-}" in
    setup) setup ;;
    demo) shift; setup; exec "$VENV/bin/python" -m snaptree.demo "$@" ;;
    test) shift; setup; exec "$VENV/bin/python" -m pytest "$@" ;;
    bench) shift; setup; exec "$VENV/bin/python" -m benchmarks.run "$@" ;;
    *) echo "usage: ./dev.sh setup|demo|test|bench [args...]" >&2; exit 2 ;;
esac
