"""timm model files; importing a module registers its models."""
from . import vim  # noqa: F401
