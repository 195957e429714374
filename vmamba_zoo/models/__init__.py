"""timm model files; importing a module registers its models."""
from . import vmamba  # noqa: F401
from .efficient_vmamba import EfficientVMamba
from .msvmamba import MSVMamba
from .vmamba import VMamba

__all__ = ['VMamba', 'EfficientVMamba', 'MSVMamba']
