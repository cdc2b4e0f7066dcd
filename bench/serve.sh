#!/usr/bin/env bash
# Measures what BENCHMARKS.md reports for the single-node mirror, each figure beside its baseline
# from the same run, on loopback:
#   - cold pull-through of a blob vs a GET straight from the origin registry (docker-registry)
#   - warm serve of a cached 1 GiB blob vs nginx sending the same bytes with sendfile (1 and 16 clients)
#   - latency of a small cached blob vs nginx (1 and 16 clients)
# Needs: docker-registry, nginx (Debian packages), and release builds: cargo build --release --bins
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release
work=$(mktemp -d /var/tmp/shoal-bench.XXXXXX)
chmod 755 "$work"
big_mib=${BIG_MIB:-1024}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin_port=$(port); nginx_port=$(port); shoal_port=$(port); admin_port=$(port)

cat > "$work/registry.yml" <<YML
version: 0.1
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$origin_port}
log: {level: error, accesslog: {disabled: true}}
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 & pids+=($!)

mkdir -p "$work/www"
cat > "$work/nginx.conf" <<NGX
daemon off; worker_processes 2; pid $work/nginx.pid; error_log $work/nginx.err;
events { worker_connections 1024; }
http { sendfile on; tcp_nopush on; access_log off;
  server { listen 127.0.0.1:$nginx_port; root $work/www; } }
NGX

push() { # file repo -> digest
  local file=$1 repo=$2 digest loc
  digest=sha256:$(sha256sum "$file" | cut -d' ' -f1)
  loc=$(curl -sf -X POST -D - -o /dev/null "http://127.0.0.1:$origin_port/v2/$repo/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
  case $loc in http*) ;; *) loc="http://127.0.0.1:$origin_port$loc";; esac
  curl -sf -X PUT -H "Content-Type: application/octet-stream" -T "$file" "$loc&digest=$digest" -o /dev/null
  echo "$digest"
}
until curl -sf "http://127.0.0.1:$origin_port/v2/" >/dev/null; do sleep 0.1; done
head -c $((big_mib << 20)) /dev/urandom > "$work/www/big"
head -c 16384 /dev/urandom > "$work/www/small"
big=$(push "$work/www/big" bench/big)
small=$(push "$work/www/small" bench/small)
nginx -c "$work/nginx.conf" & pids+=($!)

start_shoald() {
  "$bin/shoald" --data-dir "$work/data" --listen 127.0.0.1:$shoal_port --admin-listen 127.0.0.1:$admin_port \
    --upstream origin=http://127.0.0.1:$origin_port \
    --max-disk-bytes $((64 << 30)) >"$work/shoald.log" 2>&1 &
  shoal_pid=$!
  until curl -sf "http://127.0.0.1:$admin_port/healthz" >/dev/null; do sleep 0.1; done
}
stop_shoald() { kill "$shoal_pid"; wait "$shoal_pid" || true; }
seconds() { curl -sf -o /dev/null -w '%{time_total}\n' "$1"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== cold pull-through of a ${big_mib} MiB blob (3 runs each, median seconds) =="
origin_url="http://127.0.0.1:$origin_port/v2/bench/big/blobs/$big"
shoal_url="http://127.0.0.1:$shoal_port/v2/bench/big/blobs/$big?ns=origin"
direct=$(for i in 1 2 3; do seconds "$origin_url"; done | median)
cold=$(for i in 1 2 3; do rm -rf "$work/data"; start_shoald; seconds "$shoal_url"; stop_shoald; done | median)
echo "origin registry direct: ${direct}s   through shoald (cold, ingesting): ${cold}s   overhead: $(python3 -c "print(f'{($cold/$direct-1)*100:.1f}%')")"
start_shoald
seconds "$shoal_url" >/dev/null
echo "== warm serve of the cached ${big_mib} MiB blob vs nginx sendfile =="
for c in 1 16; do
  n=$(( c == 1 ? 5 : 2 ))
  "$bin/shoal" bench http --url "http://127.0.0.1:$nginx_port/big" --concurrency $c --requests $n
  "$bin/shoal" bench http --url "$shoal_url" --concurrency $c --requests $n
done
echo "== small (16 KiB) blob latency vs nginx =="
small_url="http://127.0.0.1:$shoal_port/v2/bench/small/blobs/$small?ns=origin"
seconds "$small_url" >/dev/null
for c in 1 16; do
  "$bin/shoal" bench http --url "http://127.0.0.1:$nginx_port/small" --concurrency $c --requests 2000
  "$bin/shoal" bench http --url "$small_url" --concurrency $c --requests 2000
done
stop_shoald
