"""Benchmarks of Bailu's services (`make bench`); results go to bench/results/*.json.

    python -m bench.gateway_overhead     # gateway overhead over direct gRPC, sim engine
    python -m bench.transformers_engine  # SmolLM2-135M on the transformers engine, over gRPC

These are measurements, not tests: nothing here asserts on timing.
"""
