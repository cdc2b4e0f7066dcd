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
# record what a change bought). Per fetch, the CPU seconds (user + system) the origin, the proxy or
# `shoald`, and curl spent on it are recorded from /proc/PID/stat and printed as medians.
# After each fetch through `shoald`, the script waits for its commit of the blob (the log line)
# and records the CPU seconds `shoald` spent in all by then (the ingest may run on after the
# client's last byte) and the time from the release of the last byte to the commit, when logged.
# With READERS=N (N > 1), a last section fetches the blob through one fresh `shoald` with N
# concurrent curls: each reader's time and first byte, and `shoald`'s peak resident memory.
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
origin_pid=$!
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
# CPU seconds (user + system) a process has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f\n", ($14 + $15) / hz}' "/proc/$1/stat"; }
# Prints "total_seconds first_byte_seconds", checks the bytes, and appends "origin server curl"
# CPU seconds of this fetch to the file $3 (server: the pid in $2, or none).
fetch() { # url server_pid cpu_file
  local out o0 s0 o1 s1
  o0=$(cpu "$origin_pid"); s0=$([ -n "$2" ] && cpu "$2" || echo 0)
  out=$(/usr/bin/time -f '%U %S' -o "$work/curl-time" curl -sf -o "$work/out" -w '%{time_total} %{time_starttransfer}' "$1")
  o1=$(cpu "$origin_pid"); s1=$([ -n "$2" ] && cpu "$2" || echo 0)
  echo "$(python3 -c "print(f'{$o1-$o0:.2f} {$s1-$s0:.2f}')") $(awk '{printf "%.2f", $1 + $2}' "$work/curl-time")" >> "$3"
  [ "sha256:$(sha256sum "$work/out" | cut -d' ' -f1)" = "$digest" ] || { echo "wrong bytes from $1" >&2; exit 1; }
  rm -f "$work/out"
  echo "$out"
}
# Waits for the commit of the blob by the shoald in $1 (logging to $work/shoald.log) and
# appends "cpu_seconds_in_all commit_after_release_ms" to $2 (ms "-" when not logged).
wait_commit() { # pid file
  for _ in $(seq 1200); do grep -q "verified and stored" "$work/shoald.log" && break; sleep 0.05; done
  grep -q "verified and stored" "$work/shoald.log" || { echo "no commit logged" >&2; exit 1; }
  local ms
  ms=$(grep -m1 "verified and stored" "$work/shoald.log" | sed 's/\x1b\[[0-9;]*m//g' | grep -o 'commit_after_release_ms=[0-9]*' | cut -d= -f2 || true)
  echo "$(cpu "$1") ${ms:--}" >> "$2"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== cold ${size_mib} MiB blob into a file, ${runs} runs (seconds: total, first byte) =="
origin_url="http://127.0.0.1:$origin_port/v2/bench/big/blobs/$digest"
proxy_url="http://127.0.0.1:$proxy_port/v2/bench/big/blobs/$digest"
shoal_url="http://127.0.0.1:$shoal_port/v2/bench/big/blobs/$digest?ns=origin"
: > "$work/t-direct"; : > "$work/t-proxy"; : > "$work/t-shoald"; : > "$work/t-hwm"; : > "$work/t-before"
: > "$work/k-shoald"; : > "$work/k-before"
for i in $(seq "$runs"); do
  sync
  fetch "$origin_url" "" "$work/c-direct" >> "$work/t-direct"
  start_proxy; sync; fetch "$proxy_url" "$proxy_pid" "$work/c-proxy" >> "$work/t-proxy"; stop_proxy
  start_shoald; sync; fetch "$shoal_url" "$shoal_pid" "$work/c-shoald" >> "$work/t-shoald"
  wait_commit "$shoal_pid" "$work/k-shoald"
  awk '/VmHWM/ {print $2}' "/proc/$shoal_pid/status" >> "$work/t-hwm"
  stop_shoald
  if [ -n "${SHOALD_BEFORE:-}" ]; then
    start_shoald "$SHOALD_BEFORE"; sync; fetch "$shoal_url" "$shoal_pid" "$work/c-before" >> "$work/t-before"
    wait_commit "$shoal_pid" "$work/k-before"; stop_shoald
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
echo "median CPU seconds per fetch (origin, server, curl):"
for path in direct proxy shoald before; do
  [ -s "$work/c-$path" ] || continue
  echo "  $path: origin $(cut -d' ' -f1 "$work/c-$path" | median)  server $(cut -d' ' -f2 "$work/c-$path" | median)  curl $(cut -d' ' -f3 "$work/c-$path" | median)"
done
for path in shoald before; do
  [ -s "$work/k-$path" ] || continue
  echo "  $path by its commit: CPU seconds in all $(cut -d' ' -f1 "$work/k-$path" | median) ($(cut -d' ' -f1 "$work/k-$path" | xargs)), commit after the last byte's release (ms): $(cut -d' ' -f2 "$work/k-$path" | xargs)"
done
if [ "${READERS:-1}" -gt 1 ]; then
  echo "== ${READERS} concurrent readers of the cold blob through one fresh shoald (seconds: total, first byte) =="
  start_shoald; sync
  readers=()
  for r in $(seq "$READERS"); do
    curl -sf -o "$work/out-$r" -w '%{time_total} %{time_starttransfer}\n' "$shoal_url" > "$work/r-$r" &
    readers+=($!)
  done
  for p in "${readers[@]}"; do wait "$p"; done
  wait_commit "$shoal_pid" "$work/k-readers"
  for r in $(seq "$READERS"); do
    [ "sha256:$(sha256sum "$work/out-$r" | cut -d' ' -f1)" = "$digest" ] || { echo "wrong bytes for reader $r" >&2; exit 1; }
    rm -f "$work/out-$r"
    echo "reader $r: $(cat "$work/r-$r")"
  done
  echo "shoald VmHWM with ${READERS} readers: $(awk '/VmHWM/ {print $2}' "/proc/$shoal_pid/status") KiB"
  echo "shoald by its commit: CPU seconds and commit after the last byte's release (ms): $(cat "$work/k-readers")"
  stop_shoald
fi
echo "== the disk's sequential write speed: dd ${size_mib} MiB, 1 MiB writes, fsync at the end =="
for i in 1 2 3; do
  dd if=/dev/zero of="$work/dd" bs=1M count="$size_mib" conv=fsync 2>&1 | tail -1
  rm -f "$work/dd"
done
