"""vmamba_zoo: vision state-space models for timm and OpenMMLab on one Triton selective-scan core.

Importing the package registers every model with timm (``timm.create_model('vmamba_tiny_s1l8')``).
"""
__version__ = '0.1.0'

from . import kernels  # noqa: F401  (installed from the top-level kernels/ folder)
from . import layers  # noqa: F401
from . import models  # noqa: F401
