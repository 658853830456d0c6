cd benchmarks
python3 bench_backend.py --rounds 3 --iters 20 --cpp-wrapper > $OUT/bench_backend_cpp_wrapper.log 2>&1
grep -v Warning $OUT/bench_backend_cpp_wrapper.log | tail -40
