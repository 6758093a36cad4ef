"""Layers of the MIL models: attention modules, query-aware selection and its kernels, scorers."""
