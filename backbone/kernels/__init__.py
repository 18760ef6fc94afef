"""Compiled kernels: Triton for CUDA (Triton's interpreter on CPU for tests), Numba for the CPU decoding step."""
