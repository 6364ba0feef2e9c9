# A package, so that this folder's test_benchmarks.py and tests/workflow/test_benchmarks.py (the
# five scripts it ran before this folder existed) import under different names.
