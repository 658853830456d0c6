python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider -p no:benchmark -m gpu -n 8 tests/ 2>&1 | grep -E "^E .*(Error|error)|passed|failed|FAILED" | sort | uniq -c | head -12 | tee $OUT/gpu_tests.log
for m in "" "--prefix-mask --variants"; do python3 benchmarks/bench_decode.py --batch 64 --cases gta,gla2 --q-lens 1 $m 2>&1 | grep -E "Lq=|^. g"; done | tee $OUT/bench_decode_b64.log
echo "tuning from ${SECONDS}s"
benchmarks/autotune_tables.sh $OUT $((560 - SECONDS)) 12 --q-len 1 2 > $OUT/autotune.log 2>&1
tail -3 $OUT/autotune.log
