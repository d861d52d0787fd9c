#!/bin/sh
# Full pipeline for models/warmkv-brown. Run from the repository root. Work files go to $WORK (not committed).
# Pass STEPS=N to fix the number of optimisation steps (otherwise it follows a timing trial and BUDGET_MIN).
set -eu
PY=${PY:-/usr/bin/python3}
WORK=${WORK:-/tmp/warmkv-train}
BUDGET_MIN=${BUDGET_MIN:-50}
STEPS=${STEPS:-0}
mkdir -p "$WORK"
$PY tools/train/prepare.py --work "$WORK"
$PY tools/train/check_tokenizer.py --work "$WORK"
$PY tools/train/train.py --work "$WORK" --budget-minutes "$BUDGET_MIN" --steps "$STEPS" 2>&1 | tee "$WORK/train.log"
$PY tools/train/export.py --work "$WORK" --ckpt ckpt_last.pt
$PY tools/train/sample.py --work "$WORK" --ckpt ckpt_last.pt
du -sb models/warmkv-brown
