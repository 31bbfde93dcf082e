"""Orthanc as the PACS for the viewer check: the study and the daemon's SEG in Orthanc (Debian's
1.10 with the orthanc-webviewer plugin), the SEG in the same study as its sources, and
screenshots of Orthanc Explorer's study page and of the Orthanc Web Viewer on the source series
and on the SEG series (the plugin shows one series at a time and draws no SEG overlay).

Usage (root; inside a private network namespace, Orthanc binds 0.0.0.0):
  tests/orthanc/netns.sh .venv/bin/python tests/python/orthanc_viewer_shot.py OUT CASE...

OUT is the viewer check's output (target/viewer-check): each CASE's sources are
OUT/data/CASE/src/*.dcm and its SEG OUT/CASE.seg.dcm. Screenshots go to OUT/orthanc/. Exits 1
when the SEG is not in its sources' study or a page does not show it.
"""

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "orthanc"))
import orthanc  # noqa: E402  (tests/orthanc/orthanc.py: REST helpers)

PLUGIN = "/usr/share/orthanc/plugins/libOrthancWebViewer.so"
PORT = 8042


def get(path):
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}{path}", timeout=10) as r:
        return json.loads(r.read())


def main():
    out, cases = os.path.abspath(sys.argv[1]), sys.argv[2:]
    if not os.path.exists(PLUGIN):
        sys.exit(f"{PLUGIN} is missing: apt-get install orthanc-webviewer")
    shots = os.path.join(out, "orthanc")
    shutil.rmtree(shots, ignore_errors=True)
    os.makedirs(shots)
    work = tempfile.mkdtemp(prefix="orthanc-viewer-")
    config = {
        "Name": "proxyseg-viewer-check",
        "StorageDirectory": os.path.join(work, "storage"),
        "IndexDirectory": os.path.join(work, "index"),
        "Plugins": [PLUGIN],
        "HttpServerEnabled": True,
        "HttpPort": PORT,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
    }
    cfg = os.path.join(work, "orthanc.json")
    with open(cfg, "w") as f:
        json.dump(config, f)
    cmd = ["Orthanc", cfg]
    try:
        user = pwd.getpwnam("orthanc")
        for d, _, files in os.walk(work):
            os.chown(d, user.pw_uid, user.pw_gid)
            for name in files:
                os.chown(os.path.join(d, name), user.pw_uid, user.pw_gid)
        cmd = ["runuser", "-u", "orthanc", "--"] + cmd
    except KeyError:
        pass
    log = open(os.path.join(shots, "orthanc.log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    failures = []
    try:
        for _ in range(100):
            try:
                get("/system")
                break
            except OSError:
                time.sleep(0.2)
        else:
            sys.exit("Orthanc did not start: see orthanc/orthanc.log")
        plugins = get("/plugins")
        if "web-viewer" not in plugins:
            failures.append(f"Orthanc did not load the web viewer plugin: {plugins}")
        targets = []
        for case in cases:
            src_dir = os.path.join(out, "data", case, "src")
            sources = sorted(os.path.join(src_dir, f) for f in os.listdir(src_dir))
            seg = os.path.join(out, f"{case}.seg.dcm")
            up = orthanc.upload(f"http://127.0.0.1:{PORT}", sources + [seg])
            src_studies = {u["study"] for u in up[:-1]}
            seg_study = up[-1]["study"]
            series = get(f"/studies/{seg_study}/series")
            modalities = sorted(s["MainDicomTags"].get("Modality", "") for s in series)
            ok = src_studies == {seg_study} and "SEG" in modalities and len(series) == 2
            print(f"{case}: SEG in the sources' study {seg_study}: {ok}; series {modalities}")
            if not ok:
                failures.append(f"{case}: SEG study {seg_study}, sources' {src_studies}, "
                                f"series {modalities}")
            source_series = next(s["ID"] for s in series
                                 if s["MainDicomTags"].get("Modality") != "SEG")
            seg_series = next(s["ID"] for s in series
                              if s["MainDicomTags"].get("Modality") == "SEG")
            targets.append({"case": case, "study": seg_study, "series": source_series,
                            "segSeries": seg_series})
        with open(os.path.join(shots, "targets.json"), "w") as f:
            json.dump({"base": f"http://127.0.0.1:{PORT}", "out": shots, "targets": targets}, f)
        node = subprocess.run(["node", os.path.join(ROOT, "tests", "viewer", "orthanc_shot.mjs"),
                               os.path.join(shots, "targets.json")])
        if node.returncode != 0:
            failures.append(f"orthanc_shot.mjs exited with {node.returncode}")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print(f"Orthanc screenshots: {shots}")


if __name__ == "__main__":
    main()
