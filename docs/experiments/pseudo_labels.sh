#!/usr/bin/env bash
# Cross-set attribute pseudo-labels on synthetic data (README "Your own data").
# Set A (seed 0) trains an attribute net; it labels set B (seed 1: other identities,
# other cameras); B's Table-1 rows are trained with B's true labels and with the
# pseudo-labels. ResNet-18 at 64x32 from scratch, one seed, one CPU thread.
# Usage: docs/experiments/pseudo_labels.sh [OUT] [stage: truth|pseudo|all]
set -euo pipefail
OUT=${1:-runs/pseudo}
STAGE=${2:-all}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
S="python -m sangal"
CFG=src/sangal/configs/demo.yaml
COMMON=(data.height=64 data.width=32 data.num_workers=0 train.epochs=10 attr_train.epochs=6 train.seed=0)

$S synth --out "$OUT/A" --ids 160 --cams 6 --seed 0
$S synth --out "$OUT/B" --ids 160 --cams 4 --seed 1

if [[ $STAGE == truth || $STAGE == all ]]; then
  # attribute net on A (the labeller) and every B row that uses B's true labels
  [[ -d $OUT/runA/attr/checkpoints/final ]] || $S train-attr -c $CFG data.root="$OUT/A" out="$OUT/runA" "${COMMON[@]}"
  $S train -c $CFG data.root="$OUT/B" out="$OUT/runB_true" --mode id "${COMMON[@]}"
  $S train -c $CFG data.root="$OUT/B" out="$OUT/runB_true" --mode id+attr "${COMMON[@]}"
  $S train-attr -c $CFG data.root="$OUT/B" out="$OUT/runB_true" "${COMMON[@]}"
  $S aah -c $CFG data.root="$OUT/B" out="$OUT/runB_true" "${COMMON[@]}"
  $S train -c $CFG data.root="$OUT/B" out="$OUT/runB_true" --mode san-gal "${COMMON[@]}"
fi
if [[ $STAGE == pseudo || $STAGE == all ]]; then
  # A's attribute net labels B; B's rows are retrained on the pseudo-labels only
  $S label -c $CFG data.root="$OUT/B" --checkpoint "$OUT/runA/attr/checkpoints/final" --out "$OUT/label" \
     --compare "$OUT/B/market_attribute.mat" "${COMMON[@]}"
  P=(data.attributes="$OUT/label/attributes.mat")
  $S train -c $CFG data.root="$OUT/B" out="$OUT/runB_pseudo" --mode id+attr "${P[@]}" "${COMMON[@]}"
  $S train-attr -c $CFG data.root="$OUT/B" out="$OUT/runB_pseudo" "${P[@]}" "${COMMON[@]}"
  $S aah -c $CFG data.root="$OUT/B" out="$OUT/runB_pseudo" "${P[@]}" "${COMMON[@]}"
  $S train -c $CFG data.root="$OUT/B" out="$OUT/runB_pseudo" --mode san-gal "${P[@]}" "${COMMON[@]}"
fi
