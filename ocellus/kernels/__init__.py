"""Compiled CPU kernels, built just in time on first use (a C++ compiler needed; without one the callers keep
their ATen path): gemv.py, the batch-1 decode GEMV. The layer below nn (imports errors only)."""
