"""timm model files; importing a module registers its models."""
