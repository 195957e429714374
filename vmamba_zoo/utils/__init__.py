"""Utilities behind the ``tools/`` scripts: FLOP counting, throughput benchmarking and the model-card index.

Submodules are imported on use (``from vmamba_zoo.utils.flops import measure_flops``) so that importing the package
never pulls in optional dependencies such as fvcore or matplotlib.
"""
