python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
nvidia-smi --query-gpu=name --format=csv,noheader
benchmarks/autotune_tables.sh $OUT $((${GLA_TUNE_END:-340} - SECONDS)) 8 --q-len 1 > $OUT/autotune.log 2>&1
tail -3 $OUT/autotune.log
