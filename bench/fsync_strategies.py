#!/usr/bin/env python3
"""How to make 256 MiB of new shard files durable, measured on the store's own file system.

Writes files the way the store does (tmp file, one write of its length, rename into a shard
directory; sizes drawn like 256 KiB / 1 MiB / 4 MiB chunking, about 215 files) and makes them
durable by each strategy the store's invariant allows, beside one file of the same bytes written
and fsynced once (what `dd conv=fsync` measures). Interleaved runs, median seconds and MB/s.

  fsync        all files written, then fsync each one after another (the commit before)
  fdatasync    same with fdatasync
  falloc       same, each file preallocated with posix_fallocate first
  sfr          sync_file_range(SYNC_FILE_RANGE_WRITE) after each write, fsync each at the end
  par          all files written, then fsync on 4 threads
  sfr_par      sfr, then fsync on 4 threads
  late_sfr_par all files written, then sync_file_range on each, then fsync on 4 threads (an
               ingest whose durability was deferred until its client's last byte, switching)
  syncfs       all files written, then one syncfs of the file system
  earlyN       each file handed to N threads that fsync it as soon as it is in place (the store
               now: N = 4)
  sfr_earlyN   both: sync_file_range after each write, then earlyN
Every strategy ends with an fsync of the shard directory.

Usage: bench/fsync_strategies.py DIR [RUNS (3)] [STRATEGIES (all)]
"""
import ctypes
import os
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

libc = ctypes.CDLL("libc.so.6", use_errno=True)
SYNC_FILE_RANGE_WRITE = 2
TOTAL = 256 << 20
ALL = (
    "sequential,fsync,fdatasync,falloc,sfr,par,sfr_par,late_sfr_par,syncfs,early4,early8,"
    "sfr_early4"
)

random.seed(1)
SIZES = []
while sum(SIZES) < TOTAL:
    SIZES.append(min(random.randint(256 << 10, 2 << 20), TOTAL - sum(SIZES)))
DATA = os.urandom(4 << 20)


def write_file(path, n, falloc=False, sfr=False):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    if falloc:
        os.posix_fallocate(fd, 0, n)
    view = memoryview(DATA)[:n]
    while view:
        view = view[os.write(fd, view):]
    if sfr:
        libc.sync_file_range(fd, ctypes.c_int64(0), ctypes.c_int64(0), SYNC_FILE_RANGE_WRITE)
    os.close(fd)


def fsync_path(path, data_only=False):
    fd = os.open(path, os.O_RDONLY)
    (os.fdatasync if data_only else os.fsync)(fd)
    os.close(fd)


def shard_files(d, on_written=None, **kw):
    os.makedirs(d + "/tmp")
    os.makedirs(d + "/shards")
    paths = []
    for i, n in enumerate(SIZES):
        tmp, dst = f"{d}/tmp/{i}", f"{d}/shards/{i}"
        write_file(tmp, n, **kw)
        os.rename(tmp, dst)
        paths.append(dst)
        if on_written:
            on_written(dst)
    return paths


def run(name, d):
    started = time.perf_counter()
    if name == "sequential":
        path = d + ".seq"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for n in SIZES:
            view = memoryview(DATA)[:n]
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        elapsed = time.perf_counter() - started
        os.unlink(path)
        return elapsed
    if "early" in name:
        with ThreadPoolExecutor(int(name.split("early")[1])) as pool:
            futures = []
            shard_files(
                d,
                on_written=lambda p: futures.append(pool.submit(fsync_path, p)),
                sfr=name.startswith("sfr"),
            )
            for f in futures:
                f.result()
    else:
        paths = shard_files(d, falloc=name == "falloc", sfr=name.startswith("sfr"))
        if name == "syncfs":
            fd = os.open(d, os.O_RDONLY)
            libc.syncfs(fd)
            os.close(fd)
        elif name.endswith("par"):
            if name.startswith("late_sfr"):
                for p in paths:
                    fd = os.open(p, os.O_RDONLY)
                    libc.sync_file_range(
                        fd, ctypes.c_int64(0), ctypes.c_int64(0), SYNC_FILE_RANGE_WRITE
                    )
                    os.close(fd)
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(fsync_path, paths))
        else:
            for p in paths:
                fsync_path(p, data_only=name == "fdatasync")
    fsync_path(d + "/shards")
    elapsed = time.perf_counter() - started
    os.system(f"rm -rf {d}")
    return elapsed


def main():
    base = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    names = (sys.argv[3] if len(sys.argv) > 3 else ALL).split(",")
    os.makedirs(base, exist_ok=True)
    times = {n: [] for n in names}
    for _ in range(runs):
        for n in names:
            os.sync()
            times[n].append(run(n, f"{base}/fsync-{n}-{os.getpid()}"))
    print(f"{len(SIZES)} files, {TOTAL >> 20} MiB, {runs} runs, load {os.getloadavg()[0]:.1f}")
    seq = statistics.median(times["sequential"]) if "sequential" in times else None
    for n in names:
        med = statistics.median(times[n])
        ratio = f"  {seq / med:.2f}x the sequential write" if seq else ""
        runs_text = " ".join(f"{t:.2f}" for t in times[n])
        print(f"{n:12} {med:6.3f} s {TOTAL / med / 1e6:6.0f} MB/s{ratio}   ({runs_text})")


if __name__ == "__main__":
    main()
