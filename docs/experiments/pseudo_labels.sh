#!/usr/bin/env bash
# Cross-set attribute pseudo-labels on synthetic data (README "Your own data").
# Set A (seed 0) trains an attribute net; it labels set B (seed 1: other identities,
# other cameras); B's Table-1 rows are trained with B's true labels and with the
# pseudo-labels. ResNet-18 at 64x32 from scratch, Re-ID rows over SEEDS, one CPU thread.
# Usage: docs/experiments/pseudo_labels.sh [OUT] [stage: truth|pseudo|all]
set -euo pipefail
OUT=${1:-runs/pseudo}
STAGE=${2:-all}
SEEDS=${SEEDS:-"0 1"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
S="python -m sangal"
CFG=src/sangal/configs/demo.yaml
COMMON=(data.height=64 data.width=32 data.num_workers=0 train.epochs=10 attr_train.epochs=6)

$S synth --out "$OUT/A" --ids 160 --cams 6 --seed 0
$S synth --out "$OUT/B" --ids 160 --cams 4 --seed 1

rows() {  # rows LABELS MODES...: B's Re-ID rows for every seed, heat maps from attr_$LABELS
  local labels=$1; shift
  local extra=(); [[ $labels == pseudo ]] && extra=(data.attributes="$OUT/label/attributes.mat")
  for seed in $SEEDS; do
    for mode in "$@"; do
      $S train -c $CFG data.root="$OUT/B" out="$OUT/B_$labels/s$seed" --mode "$mode" train.seed="$seed" \
         train.attr_checkpoint="$OUT/attrB_$labels/attr/checkpoints/final" train.aah_cache="$OUT/attrB_$labels/aah" \
         "${extra[@]}" "${COMMON[@]}"
    done
  done
}

if [[ $STAGE == truth || $STAGE == all ]]; then
  # the labeller (attribute net on A), then every B row that uses B's true labels
  [[ -d $OUT/runA/attr/checkpoints/final ]] || $S train-attr -c $CFG data.root="$OUT/A" out="$OUT/runA" "${COMMON[@]}"
  $S train-attr -c $CFG data.root="$OUT/B" out="$OUT/attrB_true" "${COMMON[@]}"
  $S aah -c $CFG data.root="$OUT/B" out="$OUT/attrB_true" "${COMMON[@]}"
  rows true id id+attr san-gal
fi
if [[ $STAGE == pseudo || $STAGE == all ]]; then
  # A's attribute net labels B; B's attribute rows are retrained on the pseudo-labels only
  $S label -c $CFG data.root="$OUT/B" --checkpoint "$OUT/runA/attr/checkpoints/final" --out "$OUT/label" \
     --compare "$OUT/B/market_attribute.mat" "${COMMON[@]}"
  P=(data.attributes="$OUT/label/attributes.mat")
  $S train-attr -c $CFG data.root="$OUT/B" out="$OUT/attrB_pseudo" "${P[@]}" "${COMMON[@]}"
  $S aah -c $CFG data.root="$OUT/B" out="$OUT/attrB_pseudo" "${P[@]}" "${COMMON[@]}"
  rows pseudo id+attr san-gal
fi
