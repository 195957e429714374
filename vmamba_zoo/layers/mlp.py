"""Pointwise projections and MLPs for channel-last and channel-first maps."""
from typing import Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['Linear2d', 'Mlp', 'GatedMlp', 'get_linear_layer']


class Linear2d(nn.Linear):
    """A Linear layer applied over the channels of a (B, C, H, W) map (a 1x1 convolution).

    It keeps ``nn.Linear``'s (out, in) weight so checkpoints of channel-last and channel-first models are
    interchangeable, and Linear initialisation (``isinstance(m, nn.Linear)``) applies. A (out, in, 1, 1) conv-shaped
    weight in a state dict is accepted too.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + 'weight'
        if key in state_dict and state_dict[key].dim() == 4 and state_dict[key].numel() == self.weight.numel():
            state_dict[key] = state_dict[key].reshape(self.weight.shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def get_linear_layer(channel_first: bool = False) -> Type[nn.Linear]:
    """``Linear2d`` for (B, C, H, W) maps, ``nn.Linear`` for channel-last tensors."""
    return Linear2d if channel_first else nn.Linear


class Mlp(nn.Module):
    """Two-layer MLP (fc1 -> act -> drop -> fc2 -> drop), channel-last or channel-first (1x1 projections).

    Args:
        in_features: Input channels.
        hidden_features: Hidden channels (default ``in_features``).
        out_features: Output channels (default ``in_features``).
        act_layer: Activation class.
        drop: Dropout after the activation and after fc2.
        channel_first: Operate on (B, C, H, W) maps instead of (..., C) tensors.
        bias: Use biases in fc1/fc2.
    """

    def __init__(
            self,
            in_features: int,
            hidden_features: Optional[int] = None,
            out_features: Optional[int] = None,
            act_layer: Type[nn.Module] = nn.GELU,
            drop: float = 0.,
            channel_first: bool = False,
            bias: bool = True,
    ):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        linear = get_linear_layer(channel_first)
        self.fc1 = linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.fc2 = linear(hidden_features, out_features, bias=bias)
        self.drop = nn.Dropout(drop) if drop > 0. else nn.Identity()  # one module call less per use

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


class GatedMlp(nn.Module):
    """Gated MLP (VMamba's ``gMlp``): fc1 emits 2x hidden channels, ``fc2(x * act(z))``.

    Args:
        in_features: Input channels.
        hidden_features: Hidden channels (default ``in_features``); fc1 emits twice as many.
        out_features: Output channels (default ``in_features``).
        act_layer: Activation class applied to the gate.
        drop: Dropout after fc2.
        channel_first: Operate on (B, C, H, W) maps instead of (..., C) tensors.
    """

    def __init__(
            self,
            in_features: int,
            hidden_features: Optional[int] = None,
            out_features: Optional[int] = None,
            act_layer: Type[nn.Module] = nn.GELU,
            drop: float = 0.,
            channel_first: bool = False,
    ):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        linear = get_linear_layer(channel_first)
        self.channel_dim = 1 if channel_first else -1
        self.fc1 = linear(in_features, 2 * hidden_features)
        self.act = act_layer()
        self.fc2 = linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop) if drop > 0. else nn.Identity()  # one module call less per use

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.fc1(x).chunk(2, dim=self.channel_dim)
        return self.drop(self.fc2(x * self.act(z)))
