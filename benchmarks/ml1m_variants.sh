#!/usr/bin/env bash
# MDGR, its five Table 3 variants and popularity on ml-1m-subset under the paper protocol,
# one seed, two runs at a time with one thread each (2-core machine). Writes
# benchmarks/results/ml1m-paper/<model>.json (final test metrics) and <model>.log.
# Usage: bash benchmarks/ml1m_variants.sh [DATA_DIR] [extra train_mdgr.py options...]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}; shift || true
OUT=benchmarks/results/ml1m-paper
mkdir -p "$OUT"
run() {
  local model=$1; shift
  .venv/bin/python examples/train_mdgr.py --format movielens \
    --path "$DATA/ml-1m-subset/ratings.dat.gz" --protocol paper --model "$model" \
    --epochs 40 --patience 10 --threads 1 --no-progress --seed 0 \
    --out "runs/ml1m-paper/$model" --resume \
    --metrics-json "$OUT/$model.json" "$@" > "$OUT/$model.log" 2>&1
}
run pop "$@"
for pair in "mdgr mdgr-w" "mdgr-dgc mdgr-p" "mdgr-t mdgr-pt"; do
  set -- $pair
  run "$1" & run "$2" & wait
done
