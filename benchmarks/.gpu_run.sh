python3 -m pytest -p no:cacheprovider -p no:benchmark -m gpu -n 8 -q tests/ > $OUT/gpu_tests.log 2>&1
tail -3 $OUT/gpu_tests.log
cd benchmarks
python3 bench_backend.py --rounds 3 --iters 20 > $OUT/bench_backend.log 2>&1
grep -v Warning $OUT/bench_backend.log | tail -32
python3 host_profile.py > $OUT/host_profile.log 2>&1
grep "ms/step" $OUT/host_profile.log
