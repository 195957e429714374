"""Pointwise projections and MLPs for channel-last and channel-first maps."""
from typing import Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.activations import GELU as TimmGELU, GELUTanh as TimmGELUTanh

from vmamba_zoo.kernels import (
    bias_grad_float32, layer_norm_backward, layer_norm_forward, linear_act_forward, linear_input_grad, mm_float32,
    plain_eager, use_triton_for,
)

from .eager import kept_casts, node_dtype, without_hooks
from .norm import ChannelLastLayerNorm

__all__ = ['Linear2d', 'Mlp', 'GatedMlp', 'get_linear_layer', 'mm_float32', 'bias_grad_float32']


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


class _LinearGeluLinear(torch.autograd.Function):
    """``fc2(gelu(fc1(norm(x))))`` over the last dim as one autograd node, for eager training; the LayerNorm (a
    block's pre-norm, on the Triton kernel) is optional.

    Composed of ``F.linear`` and GELU under autocast, the MLP records 13 autograd nodes (weight casts, views,
    transposes) per call, and its pre-norm one more; an eager VMamba-T training step was bound by the host issuing
    nodes on the H200 (2026-11-30 profiles). The node runs the same kernels in the same dtypes: under autocast the
    operands are cast to the autocast dtype (the norm writes it), the parameters' gradients are float32 (their
    dtype; on CUDA written by the GEMM and the sum in float32, without the composite path's 16-bit rounding) and the
    input's is in its dtype.
    """

    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, norm_eps: Optional[float], weight1, bias1, weight2, bias2,
                approximate: str, dtype: torch.dtype):
        out, saved = _mlp_forward(x, norm_weight, norm_bias, norm_eps, weight1, bias1, weight2, bias2, approximate,
                                  dtype, keep=True)
        ctx.on_triton = saved[5]
        ctx.save_for_backward(*saved[:5], *saved[6:])
        ctx.approximate, ctx.input_dtype = approximate, x.dtype
        ctx.has_bias = bias1 is not None, bias2 is not None, norm_bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors  # once: activation checkpointing unpacks each saved tensor only once
        x2d, hidden, act, w1, w2 = saved[:5]
        needs = ctx.needs_input_grad
        grad2d = grad.reshape(-1, grad.shape[-1]).to(act.dtype)
        dweight2 = mm_float32(grad2d.t(), act) if needs[6] else None
        dbias2 = bias_grad_float32(grad2d) if ctx.has_bias[1] and needs[7] else None
        if ctx.on_triton:
            dhidden = linear_input_grad(grad2d, w2, hidden, _ACT_NAMES[ctx.approximate])
        else:
            dhidden = torch.ops.aten.gelu_backward(grad2d.mm(w2), hidden, approximate=ctx.approximate)
        dweight1 = mm_float32(dhidden.t(), x2d) if needs[4] else None
        dbias1 = bias_grad_float32(dhidden) if ctx.has_bias[0] and needs[5] else None
        dx = dnorm_weight = dnorm_bias = None
        if len(saved) > 5 or needs[0]:
            dx2d = linear_input_grad(dhidden, w1) if ctx.on_triton else dhidden.mm(w1)
        if len(saved) > 5:
            x, norm_weight, stats = saved[5:]
            dx, dnorm_weight, dnorm_bias = layer_norm_backward(x.view(-1, x.shape[-1]), norm_weight, stats, dx2d,
                                                               -1, ctx.has_bias[2])
            dx = dx.view(x.shape)
        elif needs[0]:
            dx = dx2d.view(*grad.shape[:-1], w1.shape[1]).to(ctx.input_dtype)
        return dx, dnorm_weight, dnorm_bias, None, dweight1, dbias1, dweight2, dbias2, None, None


def _mlp_forward(x, norm_weight, norm_bias, norm_eps: Optional[float], weight1, bias1, weight2, bias2,
                 approximate: str, dtype: torch.dtype, keep: bool = False):
    """``_LinearGeluLinear``'s forward without autograd (``norm_eps`` None: no norm); returns the output and, with
    ``keep``, the tensors its backward needs (the last says whether the Triton linears ran)."""
    shape = x.shape
    stats = None
    if norm_eps is not None:
        x2d, stats = layer_norm_forward(x.view(-1, shape[-1]), norm_weight, norm_bias, norm_eps, dtype,
                                        store_stats=keep)
    else:
        x2d = x.reshape(-1, shape[-1]).to(dtype)
    on_triton = _triton_linears(x2d)
    if on_triton:
        # The weights are read in their dtype and rounded in the kernel, and GELU runs in fc1's epilogue.
        w1, w2 = weight1, weight2
        act, hidden = linear_act_forward(x2d, w1, bias1, _ACT_NAMES[approximate], store_pre=keep)
        out = linear_act_forward(act, w2, bias2)[0]
    else:
        w1, w2 = weight1.to(dtype), weight2.to(dtype)
        hidden = _affine(x2d, w1, bias1, dtype)
        act = F.gelu(hidden, approximate=approximate)
        out = _affine(act, w2, bias2, dtype)
    out = out.view(*shape[:-1], w2.shape[0])
    if not keep:
        return out, None
    return out, (x2d, hidden, act, w1, w2, on_triton) + ((x, norm_weight, stats) if norm_eps is not None else ())


_ACT_NAMES = {'none': 'gelu', 'tanh': 'gelu_tanh'}  # F.gelu's ``approximate`` -> linear_act's activation


def _triton_linears(x2d: torch.Tensor) -> bool:
    """Whether the MLP's linears run as ``linear_act`` kernels (GELU in fc1's epilogue, its derivative in fc2's
    input gradient, no weight casts): 16-bit CUDA activations with Triton."""
    return Mlp.triton_linears and x2d.dtype in (torch.float16, torch.bfloat16) and use_triton_for(x2d)


def _affine(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype):
    return torch.addmm(bias.to(dtype), x2d, weight.t()) if bias is not None else x2d.mm(weight.t())


def _gelu_approximation(act: nn.Module) -> Optional[str]:
    """F.gelu's ``approximate`` for a GELU module (torch's or timm's, which ``get_act_layer('gelu')`` returns), else
    None."""
    if type(act) is nn.GELU:
        return act.approximate
    return {TimmGELU: 'none', TimmGELUTanh: 'tanh'}.get(type(act))


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

    # Eager training of a channel-last MLP with GELU and no dropout runs fc1 -> GELU -> fc2 (and a pre-norm passed
    # in) as one autograd node (``_LinearGeluLinear``), and inference the same ops without module calls; False keeps
    # the composite path (the same kernels, 13 nodes).
    fused_node = True
    # That node and the inference path run fc1 + GELU and fc2 as ``linear_act`` Triton kernels on 16-bit CUDA
    # activations (the weights read in their dtype, GELU in fc1's epilogue and its derivative in fc2's input
    # gradient); False runs cuBLAS GEMMs on cast weights and PyTorch's GELU.
    triton_linears = True

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

    def _node(self, x: torch.Tensor, norm: Optional[nn.Module]) -> Optional[torch.dtype]:
        """The compute dtype when an eager call runs ``_LinearGeluLinear`` (training) or its ops (inference) on x
        (with ``norm``, a foldable LayerNorm, in front), else None."""
        if not (self.fused_node and isinstance(self.drop, nn.Identity) and _gelu_approximation(self.act) is not None
                and type(self.fc1) is nn.Linear and type(self.fc2) is nn.Linear and plain_eager()
                and without_hooks(self.fc1, self.act, self.fc2)):
            return None
        norm_weight = () if norm is None or norm.weight is None else (norm.weight,)
        return node_dtype(x, self.fc1.weight, self.fc2.weight, *norm_weight)

    @staticmethod
    def _folds(x: torch.Tensor, norm: nn.Module) -> bool:
        """Whether the node can run ``norm``: a LayerNorm over the last dim of contiguous x, on the Triton kernel."""
        return type(norm) is ChannelLastLayerNorm and x.is_contiguous() and norm.runs_triton(x) and without_hooks(norm)

    def forward(self, x: torch.Tensor, norm: Optional[nn.Module] = None) -> torch.Tensor:
        """``fc2(act(fc1(x)))`` (with dropout), of ``norm(x)`` when ``norm`` is given (a block's pre-norm, which eager
        training can then fold into the MLP's autograd node)."""
        if norm is not None and not self._folds(x, norm):
            x, norm = norm(x), None
        dtype = self._node(x, norm)
        if dtype is not None:
            norm_args = (None, None, None) if norm is None else (norm.weight, norm.bias, norm.eps)
            params = (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
            args = (x, *norm_args, *params, _gelu_approximation(self.act), dtype)
            if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                               for t in (x, *norm_args[:2], *params)):
                return _LinearGeluLinear.apply(*args)
            # Inference: the same ops without a node, with the weights' casts kept between calls.
            return _mlp_forward(x, *norm_args, *kept_casts(self, '_casts', params, dtype), *args[-2:])[0]
        if norm is not None:
            x = norm(x)
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

    def forward(self, x: torch.Tensor, norm: Optional[nn.Module] = None) -> torch.Tensor:
        """``fc2(x * act(z))`` of ``norm(x)`` when ``norm`` is given (as ``Mlp``)."""
        if norm is not None:
            x = norm(x)
        x, z = self.fc1(x).chunk(2, dim=self.channel_dim)
        return self.drop(self.fc2(x * self.act(z)))
