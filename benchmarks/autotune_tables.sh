#!/usr/bin/env bash
# Tune the shipped config table (issue 4, section 4) for the GPU this runs on, within a wall-clock budget:
# presets MLA, GLA-2, GLA-8, GTA, GQA x batch {1, 8, 32, 128} x cache {1K, 8K, 32K} x Lq {1, 2, 4}, page 64.
#
# Usage, from the repository root on the GPU machine (optuna importable):
#   benchmarks/autotune_tables.sh OUT_DIR [TOTAL_SECONDS [TRIALS_PER_BUCKET]] [more autotune flags...]
# e.g.  benchmarks/autotune_tables.sh $OUT 540 16 --q-len 1
#
# Writes OUT_DIR/<GPU>.json after every bucket (a run killed at its limit keeps what it finished) and
# OUT_DIR/<GPU>.journal (the Optuna trials; pass it back to resume a bucket cut short). Buckets already in
# OUT_DIR/<GPU>.json are skipped; when that file is missing, tuned_configs/<GPU>.json (an earlier run's
# table, if any) is copied there first, so repeated runs fill the table up. Later flags override the grid
# (argparse keeps the last --q-len, --seqlen, --batch or --preset given).
# Jobs run Lq 1 first, then per (cache, batch) every preset in turn; buckets share the time left evenly, and
# none starts with less than 10 s left. The closing lines list the buckets not covered and the table's
# median and worst speed-up over the heuristic.
set -euo pipefail

out_dir=${1:?usage: benchmarks/autotune_tables.sh OUT_DIR [TOTAL_SECONDS [TRIALS_PER_BUCKET]] [autotune flags...]}
budget=${2:-540}
trials=${3:-16}
shift $(( $# < 3 ? $# : 3 ))

python=${PYTHON:-python3}
mkdir -p "$out_dir"
table=$("$python" -c '
import sys, torch
if not torch.cuda.is_available():
    sys.exit("autotune_tables.sh: torch sees no CUDA GPU; run this on the GPU the table is for")
from glacompiler.tables.table_file import gpu_file_name
print(gpu_file_name(torch.cuda.get_device_name()))
')
if [ ! -f "$out_dir/$table" ] && [ -f "tuned_configs/$table" ]; then
    cp "tuned_configs/$table" "$out_dir/$table"
fi

PYTHONUNBUFFERED=1 exec "$python" -m glacompiler autotune \
    --preset mla gla2 gla8 gta gqa \
    --batch 1 8 32 128 --seqlen 1024 8192 32768 --q-len 1 2 4 --page-size 64 --dtype bfloat16 \
    --trials "$trials" --time-budget "$budget" \
    --out "$out_dir/$table" --storage "$out_dir/${table%.json}.journal" \
    "$@"
