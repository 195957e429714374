"""Building blocks shared by the model families (norms, patch embeds, downsamples, MLPs, SS2D mixers)."""
