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

# The end-to-end tests start the shoald and shoal binaries: build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked
