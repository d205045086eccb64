"""Kernels and the ``corey::`` custom ops that call them (ops.py)."""
