# one device call: GPU tests, host profile, whole-model bench
python3 -m pytest -p no:cacheprovider -p no:benchmark -m gpu -n 8 -q tests/ > $OUT/gpu_tests.log 2>&1
tail -3 $OUT/gpu_tests.log
cd benchmarks
python3 host_profile.py > $OUT/host_profile.log 2>&1
head -14 $OUT/host_profile.log; grep "ms/step" $OUT/host_profile.log
python3 bench_backend.py --rounds 3 --iters 20 > $OUT/bench_backend.log 2>&1
cat $OUT/bench_backend.log | grep -v Warning
python3 bench_decode.py --batch 64 --cases gla2,gta --q-lens 1 --prefix-mask > $OUT/bench_decode_b64_mask.log 2>&1
tail -3 $OUT/bench_decode_b64_mask.log
