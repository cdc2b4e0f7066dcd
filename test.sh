#!/usr/bin/env bash
# Runs Shoal's whole test suite: unit and property tests, and the end-to-end tests that start a
# real origin registry, real containerd and shoald processes on loopback ports.
#
# The end-to-end tests need Debian's `containerd` and `docker-registry` packages. Run as root, this
# script installs them when they are missing; otherwise it says exactly what to install.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v containerd >/dev/null 2>&1 && command -v ctr >/dev/null 2>&1 || missing+=(containerd)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
# tools/tests/operator.rs checks deploy/systemd/shoald.service with systemd-analyze verify.
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "test.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "test.sh: the end-to-end tests need Debian packages that are missing. Install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: the end-to-end tests run containerd, which needs root: run sudo ./test.sh" >&2
  exit 1
fi

# A clean CI build gains nothing from incremental state, which would add gigabytes to the build tree.
if [ -n "${CI:-}" ]; then
  export CARGO_INCREMENTAL=0
fi

# The end-to-end tests start the shoald and shoal binaries: build them first, then the tests.
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-run

# Scratch space: the largest end-to-end test holds about 3.3 GiB at once (the origin, five node
# stores, five containerd content stores and their unpacked snapshots), all under TMPDIR. When the
# disk is short, use memory (/dev/shm) if it has room; otherwise stop here and say so, rather than
# fail halfway with "No space left on device".
need_mib=4096
free_mib() { df -Pm "$1" | awk 'NR == 2 { print $4 }'; }
scratch="${TMPDIR:-/tmp}"
if [ "$(free_mib "$scratch")" -lt "$need_mib" ]; then
  if [ -d /dev/shm ] && [ "$(free_mib /dev/shm)" -ge $((need_mib * 2)) ]; then
    echo "test.sh: only $(free_mib "$scratch") MiB free under $scratch; the tests' scratch space goes to /dev/shm" >&2
    scratch="$(mktemp -d /dev/shm/shoal-tests.XXXXXX)"
    trap 'rm -rf "$scratch"' EXIT
  else
    echo "test.sh: the end-to-end tests need about $need_mib MiB of scratch space, but only $(free_mib "$scratch") MiB is free under $scratch." >&2
    echo "  Free some space there, or point TMPDIR at a directory with more room." >&2
    exit 1
  fi
fi
export TMPDIR="$scratch"
cargo test --workspace --locked
