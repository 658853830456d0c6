cd benchmarks
python3 host_profile.py > $OUT/host_profile.log 2>&1
grep "ms/step" $OUT/host_profile.log
python3 bench_backend.py --variants gla-2 --rounds 3 --iters 20 > $OUT/bench_backend_gla2.log 2>&1
grep -v Warning $OUT/bench_backend_gla2.log
