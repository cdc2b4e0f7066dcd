#!/usr/bin/env bash
# Measures what BENCHMARKS.md reports for the cold path (a layer nobody has cached yet), each
# figure beside its baselines from the same run, on loopback. Per run, interleaved, a fresh cache
# each time, the blob fetched with curl into a file:
#   - straight from the origin registry (docker-registry)
#   - through the distribution registry in proxy mode (docker-registry with `proxy.remoteurl`)
#   - through `shoald`
# and, for `shoald` and the origin, the time to the first byte; for `shoald`, its peak resident
# memory (VmHWM) after the fetch. Then the disk's sequential write speed with dd (fsync at the end).
# With SHOALD_BEFORE=path/to/another/shoald, that build is measured too, in the same runs (to
# record what a change bought).
# Needs: docker-registry (Debian package) and release builds: cargo build --release --bins
# Usage: bench/cold.sh [SIZE_MIB (256)] [RUNS (5)]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release
size_mib=${1:-256}
runs=${2:-5}
work=$(mktemp -d /var/tmp/shoal-cold.XXXXXX)
chmod 755 "$work"
pids=()
proxy_pid=; shoal_pid=
cleanup() {
  for p in "${pids[@]}" $proxy_pid $shoal_pid; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin_port=$(port); proxy_port=$(port); shoal_port=$(port); admin_port=$(port)

cat > "$work/origin.yml" <<YML
version: 0.1
storage: {filesystem: {rootdirectory: $work/origin}}
http: {addr: 127.0.0.1:$origin_port}
log: {level: error, accesslog: {disabled: true}}
YML
docker-registry serve "$work/origin.yml" >"$work/origin.log" 2>&1 & pids+=($!)
until curl -sf "http://127.0.0.1:$origin_port/v2/" >/dev/null; do sleep 0.1; done

head -c $((size_mib << 20)) /dev/urandom > "$work/blob"
digest=sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)
loc=$(curl -sf -X POST -D - -o /dev/null "http://127.0.0.1:$origin_port/v2/bench/big/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
case $loc in http*) ;; *) loc="http://127.0.0.1:$origin_port$loc";; esac
curl -sf -X PUT -H "Content-Type: application/octet-stream" -T "$work/blob" "$loc&digest=$digest" -o /dev/null
rm "$work/blob"

start_proxy() {
  rm -rf "$work/proxy"
  cat > "$work/proxy.yml" <<YML
version: 0.1
storage: {filesystem: {rootdirectory: $work/proxy}}
http: {addr: 127.0.0.1:$proxy_port}
log: {level: error, accesslog: {disabled: true}}
proxy: {remoteurl: "http://127.0.0.1:$origin_port"}
YML
  docker-registry serve "$work/proxy.yml" >"$work/proxy.log" 2>&1 &
  proxy_pid=$!
  until curl -sf "http://127.0.0.1:$proxy_port/v2/" >/dev/null; do sleep 0.1; done
  # The proxy asks the origin for its auth challenges at start, after it already answers /v2/.
  sleep 1
}
stop_proxy() { kill "$proxy_pid"; wait "$proxy_pid" || true; }
start_shoald() { # [binary]
  rm -rf "$work/data"
  "${1:-$bin/shoald}" --data-dir "$work/data" --listen 127.0.0.1:$shoal_port --admin-listen 127.0.0.1:$admin_port \
    --upstream origin=http://127.0.0.1:$origin_port \
    --max-disk-bytes $((64 << 30)) >"$work/shoald.log" 2>&1 &
  shoal_pid=$!
  until curl -sf "http://127.0.0.1:$admin_port/healthz" >/dev/null; do sleep 0.1; done
}
stop_shoald() { kill "$shoal_pid"; wait "$shoal_pid" || true; }
# Prints "total_seconds first_byte_seconds" and checks the bytes.
fetch() {
  local out
  out=$(curl -sf -o "$work/out" -w '%{time_total} %{time_starttransfer}' "$1")
  [ "sha256:$(sha256sum "$work/out" | cut -d' ' -f1)" = "$digest" ] || { echo "wrong bytes from $1" >&2; exit 1; }
  rm -f "$work/out"
  echo "$out"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== cold ${size_mib} MiB blob into a file, ${runs} runs (seconds: total, first byte) =="
origin_url="http://127.0.0.1:$origin_port/v2/bench/big/blobs/$digest"
proxy_url="http://127.0.0.1:$proxy_port/v2/bench/big/blobs/$digest"
shoal_url="http://127.0.0.1:$shoal_port/v2/bench/big/blobs/$digest?ns=origin"
: > "$work/t-direct"; : > "$work/t-proxy"; : > "$work/t-shoald"; : > "$work/t-hwm"; : > "$work/t-before"
for i in $(seq "$runs"); do
  sync
  fetch "$origin_url" >> "$work/t-direct"
  start_proxy; sync; fetch "$proxy_url" >> "$work/t-proxy"; stop_proxy
  start_shoald; sync; fetch "$shoal_url" >> "$work/t-shoald"
  awk '/VmHWM/ {print $2}' "/proc/$shoal_pid/status" >> "$work/t-hwm"
  stop_shoald
  if [ -n "${SHOALD_BEFORE:-}" ]; then
    start_shoald "$SHOALD_BEFORE"; sync; fetch "$shoal_url" >> "$work/t-before"; stop_shoald
  fi
  echo "run $i: direct $(tail -1 "$work/t-direct")  proxy $(tail -1 "$work/t-proxy")  shoald $(tail -1 "$work/t-shoald")  shoald VmHWM $(tail -1 "$work/t-hwm") KiB${SHOALD_BEFORE:+  shoald before $(tail -1 "$work/t-before")}"
done
direct=$(cut -d' ' -f1 "$work/t-direct" | median); proxy=$(cut -d' ' -f1 "$work/t-proxy" | median)
shoald=$(cut -d' ' -f1 "$work/t-shoald" | median)
direct_first=$(cut -d' ' -f2 "$work/t-direct" | median); shoald_first=$(cut -d' ' -f2 "$work/t-shoald" | median)
echo "median total: direct ${direct}s  proxy ${proxy}s ($(python3 -c "print(f'{$proxy/$direct:.2f}x')"))  shoald ${shoald}s ($(python3 -c "print(f'{$shoald/$direct:.2f}x')"))"
echo "median first byte: direct ${direct_first}s  shoald ${shoald_first}s (+$(python3 -c "print(f'{($shoald_first-$direct_first)*1000:.1f} ms')"))"
echo "shoald peak RSS (VmHWM) median: $(median < "$work/t-hwm") KiB"
if [ -n "${SHOALD_BEFORE:-}" ]; then
  before=$(cut -d' ' -f1 "$work/t-before" | median)
  echo "median total, shoald before: ${before}s ($(python3 -c "print(f'{$before/$direct:.2f}x')"))"
fi
echo "== the disk's sequential write speed: dd ${size_mib} MiB, 1 MiB writes, fsync at the end =="
for i in 1 2 3; do
  dd if=/dev/zero of="$work/dd" bs=1M count="$size_mib" conv=fsync 2>&1 | tail -1
  rm -f "$work/dd"
done
