#!/usr/bin/env python3
"""What durability costs on this disk, with no network and no DICOM.

Writes the ingest benchmark's own files (the same shards, one thread per shard, like the K
storescu associations) three ways, in the same run:

  page-cache   create the final file, write it in 64 KiB chunks, close. This is all storescp
               does before it acknowledges.
  fsync        proxyseg's order without the index: write a temp file in 64 KiB chunks, hand
               each 256 KiB to writeback as it fills (sync_file_range), fsync the file, rename
               it into place, fsync the directory.
  o_direct     the same order with O_DIRECT writes (up to 8 MiB each, from an aligned buffer
               the data is first copied into, as a receiver would have to), then ftruncate to
               the real length and fdatasync, instead of the page cache and fsync.

It prints files/s, MB/s, CPU ms per file (user + system of this process, which includes the
kernel's work done on its behalf) and each discipline's rate relative to page-cache. The
ratio is how much of a storage-bound server's rate survives per-file durability on this disk:
run it on the spool disk of a new site to see what `storage.durability = "fsync"` will cost
there.

Everything it wrote is removed at the end. On ext4, wait a minute before the next benchmark on
the same disk (see COOLDOWN_S in `run`).

Usage: disk_floor.py INPUT_DIR WORK_DIR [ROUNDS]
  INPUT_DIR  the ingest bench's input folder (shard*.list and the files they name)
  WORK_DIR   where to write (on the disk to measure); a new folder per run, removed at the end
"""
import ctypes
import mmap
import os
import resource
import statistics
import sys
import threading
import time

CHUNK = 64 * 1024
WRITEBACK_STEP = 256 * 1024
ALIGN = 4096
# O_DIRECT write size: each write waits for the device, so large pieces keep more in flight.
DIRECT_STEP = 8 * 1024 * 1024
_libc = ctypes.CDLL(None, use_errno=True)
SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd, offset, length):
    """Starts writeback of a byte range (what the SCP does while it receives)."""
    _libc.sync_file_range(fd, ctypes.c_int64(offset), ctypes.c_int64(length), SYNC_FILE_RANGE_WRITE)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_page_cache(data, tmp_dir, dest):
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        for off in range(0, len(data), CHUNK):
            os.write(fd, view[off:off + CHUNK])
    finally:
        os.close(fd)


def write_fsync(data, tmp_dir, dest):
    tmp = os.path.join(tmp_dir, os.path.basename(dest))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        flushed = 0
        for off in range(0, len(data), CHUNK):
            os.write(fd, view[off:off + CHUNK])
            end = min(off + CHUNK, len(data))
            if end - flushed >= WRITEBACK_STEP:
                start_writeback(fd, flushed, end - flushed)
                flushed = end
        start_writeback(fd, flushed, len(data) - flushed)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, dest)
    fsync_dir(os.path.dirname(dest))


_buffers = threading.local()


def write_o_direct(data, tmp_dir, dest):
    padded = (len(data) + ALIGN - 1) // ALIGN * ALIGN
    buf = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < padded:
        buf = _buffers.buf = mmap.mmap(-1, padded)  # page aligned
    buf[:len(data)] = data
    buf[len(data):padded] = bytes(padded - len(data))
    tmp = os.path.join(tmp_dir, os.path.basename(dest))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o644)
    try:
        view = memoryview(buf)
        off = 0
        while off < padded:
            off += os.write(fd, view[off:min(off + DIRECT_STEP, padded)])
        os.ftruncate(fd, len(data))
        os.fdatasync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, dest)
    fsync_dir(os.path.dirname(dest))


DISCIPLINES = {"page-cache": write_page_cache, "fsync": write_fsync, "o_direct": write_o_direct}


def drop_caches():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
    except OSError:
        pass  # not root: the runs still alternate, so both see the same cache state


def run(name, shards, work):
    """Writes every shard with one thread each; returns (seconds, cpu seconds, files, bytes)."""
    root = os.path.join(work, f"{name}-{time.time_ns()}")
    out, tmp = os.path.join(root, "out"), os.path.join(root, "tmp")
    os.makedirs(out)
    os.makedirs(tmp)
    fsync_dir(root)
    write = DISCIPLINES[name]
    errors = []

    def worker(i, files):
        try:
            for j, data in enumerate(files):
                write(data, tmp, os.path.join(out, f"{i}-{j}.dcm"))
        except OSError as e:
            errors.append(e)

    drop_caches()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i, s)) for i, s in enumerate(shards)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    if errors:
        raise SystemExit(f"{name}: {errors[0]}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    n = sum(len(s) for s in shards)
    nbytes = sum(len(d) for s in shards for d in s)
    return secs, cpu, n, nbytes, root


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    inp, work = sys.argv[1], sys.argv[2]
    rounds = max(1, int(sys.argv[3])) if len(sys.argv) > 3 else 3
    lists = sorted(f for f in os.listdir(inp) if f.startswith("shard") and f.endswith(".list"))
    if not lists:
        raise SystemExit(f"no shard*.list in {inp}: run scripts/bench/ingest/run once first")
    shards = []
    for name in lists:
        with open(os.path.join(inp, name)) as f:
            shards.append([open(p.strip(), "rb").read() for p in f if p.strip()])
    os.makedirs(work, exist_ok=True)
    results = {name: [] for name in DISCIPLINES}
    written = []
    try:
        for _ in range(rounds):
            for name in DISCIPLINES:
                secs, cpu, n, nbytes, root = run(name, shards, work)
                written.append(root)
                results[name].append((secs, cpu))
    finally:
        for root in written:
            for d, _, files in os.walk(root, topdown=False):
                for f in files:
                    os.remove(os.path.join(d, f))
                os.rmdir(d)
    ref = [s for s, _ in results["page-cache"]]
    print(f"{len(shards)} threads, {n} files, {nbytes / 1e6:.0f} MB per run, {rounds} round(s), "
          f"written under {work}")
    print(f"{'discipline':<12} {'files/s':>9} {'MB/s':>8} {'CPU ms/file':>12} {'vs page-cache':>14}"
          "   seconds per round")
    for name, rs in results.items():
        secs = statistics.median(s for s, _ in rs)
        cpu = statistics.median(c for _, c in rs)
        ratio = statistics.median(a / s for a, (s, _) in zip(ref, rs))
        print(f"{name:<12} {n / secs:9.0f} {nbytes / 1e6 / secs:8.0f} {cpu / n * 1000:12.3f} "
              f"{ratio:13.2f}x   {' '.join(f'{s:.2f}' for s, _ in rs)}")


if __name__ == "__main__":
    main()
