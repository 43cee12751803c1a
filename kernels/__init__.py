"""Triton kernels of kmgan_ext, installed as ``kmgan_ext.kernels``.

Each module holds one op's kernels and launchers; this package exposes the backend
interface (see kmgan_ext/_dispatch.py) that ``backend="triton"`` routes to.
"""
