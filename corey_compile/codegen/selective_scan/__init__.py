"""Selective scan: reference (naive.py), chunked prefill kernel (chunk.py), decode step (step.py)."""
