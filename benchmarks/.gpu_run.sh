python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider -p no:benchmark -m gpu tests/test_kernels_gpu.py -k "masks and mla and token" 2>&1 | grep -E "^E .*(Error|error)|passed|failed" | sort | uniq -c | head -8 | tee $OUT/mla_masks.log
python3 benchmarks/bench_decode.py --batch 64 --cases gla2,gta --q-lens 1 --prefix-mask 2>&1 | tail -3 | tee $OUT/bench_decode.log
python3 benchmarks/bench_backend.py --rounds 3 --iters 20 2>&1 | grep -v -i warn | tee $OUT/bench_backend.log
echo "tuning from ${SECONDS}s"
benchmarks/autotune_tables.sh $OUT $((575 - SECONDS)) 12 --q-len 1 > $OUT/autotune.log 2>&1
tail -5 $OUT/autotune.log
