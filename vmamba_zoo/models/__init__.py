"""timm model files; importing a module registers its models."""
from .efficient_vmamba import *  # noqa: F401,F403
from .msvmamba import *  # noqa: F401,F403
