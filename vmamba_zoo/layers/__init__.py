"""Building blocks shared by the model families (norms, patch embeds, downsamples, MLPs, SS2D mixers)."""
from .add_norm import RMSNorm, add_rms_norm, rms_norm
from .downsample import ConvDownsample, PatchMerging2d, create_downsample
from .mamba_mixer import BiMambaMixer
from .mlp import GatedMlp, Linear2d, Mlp, get_linear_layer
from .norm import ChannelLastLayerNorm, LayerNorm2d, Permute, get_norm_layer, to_channels_first, to_channels_last
from .patch_embed import OverlapPatchEmbed, PatchEmbed, check_image_input, create_patch_embed
from .ss2d import SS2D, A_log_init, SpatialSoftmax, dt_bias_init, grouped_projection

__all__ = [
    'RMSNorm', 'add_rms_norm', 'rms_norm', 'BiMambaMixer',
    'ConvDownsample', 'PatchMerging2d', 'create_downsample', 'GatedMlp', 'Linear2d', 'Mlp', 'get_linear_layer',
    'LayerNorm2d', 'ChannelLastLayerNorm', 'Permute', 'get_norm_layer', 'to_channels_first', 'to_channels_last',
    'OverlapPatchEmbed', 'PatchEmbed', 'check_image_input', 'create_patch_embed', 'SS2D', 'A_log_init',
    'SpatialSoftmax', 'dt_bias_init', 'grouped_projection',
]
