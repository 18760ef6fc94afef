"""Benchmarks: each script prints a table, compares with a baseline measured in the same run and writes
its results under bench/results/."""
