"""Kernel CI front ends: a matrix of kernels run at once, and LAVA jobs for labs."""
