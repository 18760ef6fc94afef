"""Triton kernels (CUDA; Triton's interpreter on CPU for tests)."""
