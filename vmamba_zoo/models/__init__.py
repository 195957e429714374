"""timm model files; importing a module registers its models."""
from . import vim, vmamba  # noqa: F401
from .efficient_vmamba import EfficientVMamba
from .msvmamba import MSVMamba
from .vim import VisionMamba
from .vmamba import VMamba

__all__ = ['VMamba', 'EfficientVMamba', 'MSVMamba', 'VisionMamba']
