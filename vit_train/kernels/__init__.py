"""Compute kernels: the rewritten ViT forwards and fused MLP (speed), and the shared build cache of
ColossalAI's JIT C++/CUDA kernels (HybridAdam)."""
