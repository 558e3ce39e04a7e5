"""Kernel builds: one folder each, holding the ``kernel.json`` contract that the
host library reads and the NPU-side sources that produce the xclbin.

Installed, this folder is the package ``npu_pipeline.kernels`` and carries only
the contracts (see ``npu_pipeline.contract``).
"""
