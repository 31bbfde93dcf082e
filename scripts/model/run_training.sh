#!/usr/bin/env bash
# Full phantom-tiny training pipeline (about 60 min on 2 shared CPU cores).
# Run from scripts/model:  nohup nice -n 5 ./run_training.sh > runs/train.out 2>&1 &
# STAGE=ppg skips the pretraining (reuses runs/pretrain.pt).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-/work/main/.venv/bin/python}
LOG=runs/train.log
mkdir -p runs
if [ "${STAGE:-all}" = all ]; then
    # 1. tiny SAM pretrained FROM SCRATCH on a larger phantom corpus (stand-in for real SAM weights)
    $PY -m proxyseg_model.train pretrain --pretrain-per-family 300 --minutes ${PRETRAIN_MIN:-24} --lr 6e-4 \
        --out runs/pretrain.pt --log $LOG
fi
if [ "${STAGE:-all}" = all ] || [ "${STAGE:-all}" = pretrain2 ]; then
    # 1b. continued pretraining: vessels sampled 3x as often, prompts of up to 8 points, cosine decay.
    #     The 24-min run above leaves a SAM that cannot draw vessels at all (a prompt optimised
    #     directly on the frozen model reaches Dice 0.20); this stage gives it the capacity.
    $PY -m proxyseg_model.train pretrain --init runs/pretrain.pt --pretrain-per-family 300 \
        --minutes ${PRETRAIN2_MIN:-16} --lr 3e-4 --cosine --object-weight vessels=3 --max-points 8 \
        --out runs/pretrain2.pt --log $LOG
fi
# 2. few-shot PPG (+ LoRA): 16 pairs per family, Dice loss. AdamW (lr 1e-3, wd 5e-4) instead of the
#    paper's SGD (lr 0.01, momentum 0.9, wd 5e-4): with ~600 steps on this CPU budget the SGD
#    updates of the from-scratch PPG are too small to learn (see STATUS.md). --optimizer sgd is the default.
#    3400 steps (cosine schedule over steps), a candidate checkpoint every 400 steps; the one with the
#    best mean Dice on the validation phantoms (seeds 3000-3059, disjoint from training, test and demo)
#    becomes runs/ppg.pt. Longer training helps vessels but makes the optic disc collapse on some images.
$PY -m proxyseg_model.train ppg --init runs/pretrain2.pt --optimizer adamw --steps ${PPG_STEPS:-3400} --minutes 40 \
    --save-every 400 --out runs/ppg-sel.pt --log $LOG
$PY -m proxyseg_model.select runs/ppg-sel.step*.pt runs/ppg-sel.pt --out runs/ppg.pt --json runs/select.json | tee -a $LOG
# 3. ablations and a matched full PPG, all on the same short schedule
for v in "full:" "no-map:--no-selective-map" "no-ccm:--no-ccm"; do
    tag=${v%%:*}; flag=${v#*:}
    $PY -m proxyseg_model.train ppg --init runs/pretrain2.pt --optimizer adamw --steps ${ABL_STEPS:-500} \
        --minutes ${ABL_MIN:-30} $flag --tag ppg-short-$tag --out runs/ppg-short-$tag.pt --log $LOG
done
echo "training pipeline done" >> $LOG
