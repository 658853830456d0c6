# one device call: host profile with the op's launches stubbed, then the 17 missing H100 buckets
cd benchmarks
python3 host_profile.py > $OUT/host_profile.log 2>&1
head -16 $OUT/host_profile.log; grep "ms/step" $OUT/host_profile.log
cd ..
bash benchmarks/autotune_tables.sh $OUT/tables 330 10 --q-len 2 --seqlen 32768 > $OUT/autotune_q2_32k.log 2>&1
tail -8 $OUT/autotune_q2_32k.log
