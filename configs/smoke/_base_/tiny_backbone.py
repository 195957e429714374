# The tiny zoo backbone every smoke config trains (one place to change it): VMamba-T[s1l8]'s blocks, one per stage,
# 16-128 channels. Drop path off, so that a resumed run repeats an uninterrupted one exactly.
tiny_model_name = 'vmamba_tiny_s1l8'
tiny_model_kwargs = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))
tiny_drop_path_rate = 0.0
tiny_channels = [16, 32, 64, 128]
tiny_aux_channels = tiny_channels[2]  # the level an auxiliary FCN head reads (in_index=2)
