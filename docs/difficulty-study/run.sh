#!/usr/bin/env bash
# The difficulty-score study: which difficulty head makes the served DS rank held-out frames by
# how wrong the model is. Every variant is one exported graph, judged by the same command,
# `deal-client eval`, on two sets of 400 fresh frames: the tuning frames (generator seed 101),
# on which variants and the default strategy are chosen, and the held-out frames (seed 202),
# which only report. Resumable: a step whose output exists is skipped.
#
#   docs/difficulty-study/run.sh [WORK]       (WORK: where data and models go; default runs/study)
#
# Needs the shipped recipe's checkpoint (deal-train fit --preset cpu) and writes the tables (tuning
# frames, then held-out frames) to docs/difficulty-study/variants.md. The paper's recipe costs one
# more training run; TRAIN_PAPER=0 leaves its rows out.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
WORK=${1:-runs/study}
DATA=$WORK/streets            # the training set: seed 0, 1000 scenes, 180x240
TUNE=$WORK/holdout-tune       # the choosing frames: seed 101, 400 scenes
HOLDOUT=$WORK/holdout         # the reported frames: seed 202, 400 scenes
SHIP=${SHIP:-runs/ship/best.pt}
PAPER=$WORK/paper             # the paper's recipe: the same training, the paper's head
mkdir -p "$WORK/models" "$WORK/eval" "$WORK/eval-tune"

[ -d "$DATA" ] || $BIN/deal-train synth --out "$DATA" --n 1000 --size 180x240 --seed 0 >/dev/null
[ -d "$HOLDOUT" ] || $BIN/deal-train synth --out "$HOLDOUT" --n 400 --size 180x240 --seed 202 >/dev/null
[ -d "$TUNE" ] || $BIN/deal-train synth --out "$TUNE" --n 400 --size 180x240 --seed 101 >/dev/null
ls "$PWD/$HOLDOUT"/{train,val,test}/*.png > "$WORK/holdout.txt"  # absolute: a list is read relative to its folder
ls "$PWD/$TUNE"/{train,val,test}/*.png > "$WORK/tune.txt"

# name | checkpoint | refit options (empty: as trained). The paper's recipe (its head trained
# jointly, as published; no refit) is trained before its first variant.
VARIANTS="
V5c-preset|$SHIP|
V2s-Q-bce|$SHIP|--inputs Q --hidden 0 --context 0 --loss bce --l2 0
V3-QUUA-linear|$SHIP|--inputs Q+U+UA --hidden 0 --context 0 --loss bce --l2 1e-4
V4-QUUA-mlp32|$SHIP|--inputs Q+U+UA --hidden 32 --context 0 --loss bce --l2 1e-2
V4c-QUUALP-mlp16-ctx3|$SHIP|--inputs Q+U+UA+LP --hidden 16 --context 3 --loss bce --l2 1e-2
V5-QUUADEC-linear|$SHIP|--inputs Q+U+UA+DEC --hidden 0 --context 0 --loss bce --l2 1e-4
V5-QUUADEC-mlp32|$SHIP|--inputs Q+U+UA+DEC --hidden 32 --context 0 --loss bce --l2 1e-2
V0-paper-joint|$PAPER/best.pt|
V1-paper-refit-wbce|$PAPER/best.pt|--loss wbce
V2-paper-refit-bce|$PAPER/best.pt|--loss bce
"
while IFS='|' read -r name ckpt options; do
  [ -n "$name" ] || continue
  # history.json is written when a fit ends (best.pt already exists mid-run); a rerun resumes
  if [ "$ckpt" = "$PAPER/best.pt" ] && [ ! -f "$PAPER/history.json" ]; then
    [ "${TRAIN_PAPER:-1}" = 1 ] || continue  # TRAIN_PAPER=0: leave the paper's recipe out
    $BIN/deal-train fit --data "$DATA" --out "$PAPER" --preset cpu difficulty_inputs=Q \
      difficulty_hidden=0 difficulty_context=0 refit_difficulty=false threads=2 >/dev/null 2>&1
  fi
  model=$WORK/models/$name
  if [ ! -f "$model.pt" ]; then
    if [ -n "$options" ]; then
      # shellcheck disable=SC2086
      $BIN/deal-train refit --checkpoint "$ckpt" --data "$DATA" --out "$model.pt" $options >/dev/null
    else
      cp "$ckpt" "$model.pt"
    fi
  fi
  [ -f "$model.onnx" ] || $BIN/deal-export onnx --checkpoint "$model.pt" --out "$model.onnx" >/dev/null
  [ -f "$WORK/eval-tune/$name/eval.json" ] || $BIN/deal-client eval "$WORK/tune.txt" \
    --labels "$TUNE" --model "$model.onnx" --out "$WORK/eval-tune/$name" --no-progress >/dev/null
  [ -f "$WORK/eval/$name/eval.json" ] || $BIN/deal-client eval "$WORK/holdout.txt" \
    --labels "$HOLDOUT" --model "$model.onnx" --out "$WORK/eval/$name" --no-progress >/dev/null
  # the map's pixel AUROC for the error mask, on the holdout's 280 train-split frames
  [ -f "$WORK/eval/$name/metrics.json" ] || $BIN/deal-train eval --checkpoint "$model.pt" \
    --data "$HOLDOUT" --split train --out "$WORK/eval/$name" >/dev/null 2>&1
done <<< "$VARIANTS"
# The model shipped before this study (paper head refit with wbce, trained on the street set
# before drives and rare conditions), on the same frames.
[ -f "$WORK/eval/before/eval.json" ] || $BIN/deal-client eval "$WORK/holdout.txt" \
  --labels "$HOLDOUT" --model "${BEFORE:-model_repository/deal/1/model.onnx}" \
  --out "$WORK/eval/before" --no-progress >/dev/null || true
[ -f "$WORK/eval-tune/before/eval.json" ] || $BIN/deal-client eval "$WORK/tune.txt" \
  --labels "$TUNE" --model "${BEFORE:-model_repository/deal/1/model.onnx}" \
  --out "$WORK/eval-tune/before" --no-progress >/dev/null || true
# The shipped head: the variant whose ds catches the most of the worst 10% of the tuning frames
# (ties: Spearman with the error rate); see the README's "Which strategy".
$BIN/python docs/difficulty-study/table.py "${SHIPPED:-V3-QUUA-linear}" "$WORK/eval-tune" "$WORK/eval" \
  > docs/difficulty-study/variants.md
cat docs/difficulty-study/variants.md
