# The tiny zoo backbone every smoke config trains (one place to change it).
tiny_model_name = 'convnext_atto'
tiny_model_kwargs = dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1))
tiny_channels = [16, 32, 64, 128]
tiny_aux_channels = tiny_channels[2]  # the level an auxiliary FCN head reads (in_index=2)
