# one device call: GPU tests, host profile, whole-model bench, masked-stage sweep
python3 -m pytest -p no:cacheprovider -p no:benchmark -m gpu -n 8 -q tests/ > $OUT/gpu_tests.log 2>&1
tail -3 $OUT/gpu_tests.log
cd benchmarks
python3 host_profile.py > $OUT/host_profile.log 2>&1
head -14 $OUT/host_profile.log; grep "ms/step" $OUT/host_profile.log
python3 bench_backend.py --rounds 3 --iters 20 > $OUT/bench_backend.log 2>&1
cat $OUT/bench_backend.log | grep -v Warning
for c in gla2 gta; do
  timeout 100 python3 sweep_configs.py --case $c --batch 64 --prefix-mask --grid 'num_stages=2,3,4' > $OUT/sweep_mask_$c.log 2>&1
  grep -E "^#| us " $OUT/sweep_mask_$c.log | grep -v "best:" | head -8
done
