"""Test configuration.

Triton kernels are checked on CPU through Triton's interpreter, which is chosen when a kernel is defined, so the
variable must be set before anything imports vmamba_zoo.
"""
import os

os.environ.setdefault('TRITON_INTERPRET', '1')
