#!/usr/bin/env bash
# Step-controlled ablations of the LiteMedSAM PPG (evaluate_real.py's short / no_selective_map /
# no_ccm columns): for each seed, the full PPG, the PPG without CSM's Selective Map and the PPG
# without CCM, all on the same schedule (STEPS steps, AdamW, same episodes per seed).
#   nohup ./run_ablations_lite.sh > runs/ablations.out 2>&1 &
# VARIANTS / SEEDS / THREADS split the work into lanes, e.g. one lane per variant with THREADS=1.
# PREFIX names the checkpoints (runs/$PREFIX-<variant>-s<seed>.pt); a new architecture gets a new one.
set -euo pipefail
cd "$(dirname "$0")"
export PYTHONPATH=.
py=../../.venv/bin/python
STEPS="${STEPS:-300}"
for seed in ${SEEDS:-1 2 3}; do
  for variant in ${VARIANTS:-short nomap noccm}; do
    out="runs/${PREFIX:-abl2}-$variant-s$seed.pt"
    [ -f "$out" ] && continue
    flags=()
    [ "$variant" = nomap ] && flags=(--no-selective-map)
    [ "$variant" = noccm ] && flags=(--no-ccm)
    "$py" -m proxyseg_model.train_lite --steps "$STEPS" --minutes 999 --optimizer adamw --max-support 3 \
      --seed "$seed" --threads "${THREADS:-2}" --save-every 0 "${flags[@]}" --out "$out" --log runs/ablations.log
  done
done
