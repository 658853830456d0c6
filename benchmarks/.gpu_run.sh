cd benchmarks
python3 host_profile.py > $OUT/host_profile.log 2>&1
head -24 $OUT/host_profile.log; grep "ms/step" $OUT/host_profile.log
