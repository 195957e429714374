"""timm model files; importing a module registers its models."""
from . import vmamba  # noqa: F401
from .vmamba import VMamba

__all__ = ['VMamba']
