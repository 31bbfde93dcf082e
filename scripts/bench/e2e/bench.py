"""End-to-end benchmark driver: N copies of each bundled demo study through the whole
pipeline (C-STORE in -> stable -> route -> infer -> SEG -> C-STORE out), CPU, bundled model.

Latency per study = SEG delivered - last instance received - stable age (from proxyseg's own
SQLite timestamps). Prints p50 / p95 / max per kind (2D image, cine, volume), studies per
minute, and the daemon's peak RSS.
"""
import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time

import pydicom
from pydicom.uid import generate_uid

KINDS = {"fundus": "2D image (RGB fundus)", "us": "cine (US, 8 frames)", "mr": "volume (MR, 8 slices)"}


def copies(src_dir, out_dir, n):
    """n copies of a demo study with fresh Study/Series/SOP UIDs; returns list of folders."""
    files = sorted(f for f in os.listdir(src_dir) if f.endswith(".dcm"))
    dirs = []
    for i in range(n):
        d = os.path.join(out_dir, f"{os.path.basename(src_dir)}-{i:03d}")
        os.makedirs(d, exist_ok=True)
        study, series = generate_uid(), generate_uid()
        for f in files:
            ds = pydicom.dcmread(os.path.join(src_dir, f))
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(os.path.join(d, f), enforce_file_format=True)
        dirs.append((d, study))
    return dirs


def pct(v, p):
    v = sorted(v)
    if not v:
        return float("nan")
    k = (len(v) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("-n", type=int, default=10, help="copies of each demo study")
    ap.add_argument("--stable-age", type=float, default=1.0)
    ap.add_argument("--port", type=int, default=22112)
    ap.add_argument("--pacs-port", type=int, default=22113)
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    demo = os.path.join(a.models, "phantom-tiny", "demo-studies")
    studies = {k: copies(os.path.join(demo, k), os.path.join(a.work, "in"), a.n) for k in KINDS}
    cfg = os.path.join(a.work, "proxyseg.toml")
    with open(cfg, "w") as f:
        f.write(f"""[dicom]
listen = "127.0.0.1:{a.port}"
min_free_disk_mb = 64
[[dicom.peers]]
ae_title = "BENCHPACS"
host = "127.0.0.1"
port = {a.pacs_port}
[storage]
data_dir = "{a.work}/var"
[pipeline]
stable_age_s = {a.stable_age}
scan_interval_ms = 50
[engine]
models_dir = "{a.models}"
[delivery]
poll_interval_ms = 50
[metrics]
listen = ""
[log]
filter = "warn"
""")
    env = dict(os.environ, TCP_NODELAY="1")
    pacs = subprocess.Popen(["storescp", "-od", os.path.join(a.work, "pacs"), str(a.pacs_port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.makedirs(os.path.join(a.work, "pacs"), exist_ok=True)
    daemon = subprocess.Popen([a.binary, "serve", "--config", cfg], stderr=open(os.path.join(a.work, "daemon.log"), "w"))
    try:
        time.sleep(2.0)
        db = sqlite3.connect(f"file:{a.work}/var/proxyseg.sqlite?mode=ro", uri=True)

        def send(d):
            files = [os.path.join(d, f) for f in sorted(os.listdir(d))]
            subprocess.run(["storescu", "-R", "-aet", "BENCHPACS", "-aec", "PROXYSEG", "127.0.0.1", str(a.port), *files],
                           env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def settled():
            return db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('delivered','failed','unmatched')").fetchone()[0]

        # Phase 1, latency: one study at a time (the next is sent once the previous is delivered),
        # so each latency is the pipeline's own, without queueing behind other studies.
        total = 0
        for i in range(a.n // 2):
            for k in KINDS:
                send(studies[k][i][0])
                total += 1
                deadline = time.time() + 120
                while settled() < total and time.time() < deadline:
                    time.sleep(0.02)
        isolated = {uid for k in KINDS for _, uid in studies[k][: a.n // 2]}
        # Phase 2, throughput: the rest sent back to back, as a PACS flushing a backlog.
        t0 = time.time()
        flood = 0
        for i in range(a.n // 2, a.n):
            for k in KINDS:
                send(studies[k][i][0])
                total += 1
                flood += 1
        deadline = time.time() + 60 + 20 * flood
        while settled() < total and time.time() < deadline:
            time.sleep(0.2)
        wall = time.time() - t0
        rss = 0
        with open(f"/proc/{daemon.pid}/status") as st:
            for line in st:
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) / 1024
        rows = db.execute("""SELECT j.study_uid, j.state, s.last_received_at, MAX(o.delivered_at)
                             FROM jobs j JOIN studies s ON s.study_uid = j.study_uid
                             LEFT JOIN outbox o ON o.job_id = j.id GROUP BY j.id""").fetchall()
    finally:
        daemon.terminate()
        daemon.wait(30)
        pacs.kill()
    by_study = {uid: (state, last, deliv) for uid, state, last, deliv in rows}
    print(f"\nend-to-end, CPU, bundled model, stable_age_s={a.stable_age}")
    ok_all = 0
    for phase, pick in (("one study at a time (latency)", lambda uid: uid in isolated),
                        ("back to back (with queueing)", lambda uid: uid not in isolated)):
        print(f"\n{phase}")
        print(f"{'kind':<26}{'n':>4}{'ok':>5}{'p50 s':>9}{'p95 s':>9}{'max s':>9}")
        for k, label in KINDS.items():
            lat = []
            uids = [uid for _, uid in studies[k] if pick(uid)]
            for uid in uids:
                st = by_study.get(uid)
                if st and st[0] == "delivered" and st[2] is not None:
                    lat.append(st[2] - st[1] - a.stable_age)
            ok_all += len(lat)
            print(f"{label:<26}{len(uids):>4}{len(lat):>5}{pct(lat, .5):>9.3f}{pct(lat, .95):>9.3f}{(max(lat) if lat else float('nan')):>9.3f}")
    print(f"\nthroughput, back to back: {flood / wall * 60:.1f} studies per minute ({flood} studies in {wall:.1f} s, sending included)")
    print(f"peak RSS of proxyseg: {rss:.0f} MB")
    print("target: p50 <= 1 s for a single 2D image (latency = SEG delivered - last instance received - stable age)")
    if ok_all < total:
        print(f"WARNING: {total - ok_all} studies did not reach 'delivered'; see {a.work}/daemon.log", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
