"""Building blocks shared by the model families (norms, patch embeds, downsamples, MLPs, SS2D mixers)."""
from .add_norm import RMSNorm, add_rms_norm, rms_norm
from .mamba_mixer import BiMambaMixer
