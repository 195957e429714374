"""Pointwise projections and MLPs for channel-last and channel-first maps."""
from typing import Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.activations import GELU as TimmGELU, GELUTanh as TimmGELUTanh

from vmamba_zoo.kernels import cast_to, layer_norm_backward, layer_norm_forward, plain_eager

from .eager import add_residual, kept_casts, node_dtype, without_hooks
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
                approximate: str, dtype: torch.dtype, residual: bool = False, scale=None):
        out, saved = _mlp_forward(x, norm_weight, norm_bias, norm_eps, weight1, bias1, weight2, bias2, approximate,
                                  dtype, keep=True, residual=residual, scale=scale)
        ctx.save_for_backward(*saved, scale)
        ctx.approximate, ctx.input_dtype, ctx.residual = approximate, x.dtype, residual
        ctx.has_bias = bias1 is not None, bias2 is not None, norm_bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors  # once: activation checkpointing unpacks each saved tensor only once
        x2d, hidden, act, w1, w2 = saved[:5]
        scale, saved = saved[-1], saved[:-1]
        needs = ctx.needs_input_grad
        branch_grad = grad if scale is None else grad * scale.to(grad.dtype)
        grad2d = cast_to(branch_grad.reshape(-1, grad.shape[-1]), act.dtype)
        dweight2 = mm_float32(grad2d.t(), act) if needs[6] else None
        dbias2 = bias_grad_float32(grad2d) if ctx.has_bias[1] and needs[7] else None
        dhidden = torch.ops.aten.gelu_backward(grad2d.mm(w2), hidden, approximate=ctx.approximate)
        dweight1 = mm_float32(dhidden.t(), x2d) if needs[4] else None
        dbias1 = bias_grad_float32(dhidden) if ctx.has_bias[0] and needs[5] else None
        dx = dnorm_weight = dnorm_bias = None
        if len(saved) > 5:
            x, norm_weight, stats = saved[5:]
            # With the residual, x's gradient through the identity is added as the norm's backward writes dx.
            dx, dnorm_weight, dnorm_bias = layer_norm_backward(x.view(-1, x.shape[-1]), norm_weight, stats,
                                                               dhidden.mm(w1), -1, ctx.has_bias[2],
                                                               grad if ctx.residual else None)
            dx = dx.view(x.shape)
        elif needs[0]:
            dx = dhidden.mm(w1).view(*grad.shape[:-1], w1.shape[1]).to(ctx.input_dtype)
        return dx, dnorm_weight, dnorm_bias, None, dweight1, dbias1, dweight2, dbias2, None, None, None, None


def _mlp_forward(x, norm_weight, norm_bias, norm_eps: Optional[float], weight1, bias1, weight2, bias2,
                 approximate: str, dtype: torch.dtype, keep: bool = False, residual: bool = False, scale=None):
    """``_LinearGeluLinear``'s forward without autograd (``norm_eps`` None: no norm); returns the output (plus x
    with ``residual``, the output times ``scale`` when given) and, with ``keep``, the tensors its backward needs."""
    shape = x.shape
    stats = None
    if norm_eps is not None:
        x2d, stats = layer_norm_forward(x.view(-1, shape[-1]), norm_weight, norm_bias, norm_eps, dtype,
                                        store_stats=keep)
    else:
        x2d = x.reshape(-1, shape[-1]).to(dtype)
    w1, w2 = weight1.to(dtype), weight2.to(dtype)
    hidden = _affine(x2d, w1, bias1, dtype)
    act = F.gelu(hidden, approximate=approximate)
    out = _affine(act, w2, bias2, dtype).view(*shape[:-1], w2.shape[0])
    if residual:
        out = add_residual(x, out, scale, overwrite=True)
    if not keep:
        return out, None
    return out, (x2d, hidden, act, w1, w2) + ((x, norm_weight, stats) if norm_eps is not None else ())


def _affine(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype):
    return torch.addmm(bias.to(dtype), x2d, weight.t()) if bias is not None else x2d.mm(weight.t())


# cuBLAS GEMMs of 16-bit operands can write float32 (``torch.mm(..., out_dtype=...)``, CUDA only).
_MM_WRITES_FLOAT32 = hasattr(torch.ops.aten.mm, 'dtype')


def mm_float32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in float32, as a parameter's gradient: one GEMM writing float32 where cuBLAS can, instead of a
    16-bit GEMM and a cast (one kernel less, and no 16-bit rounding of the gradient)."""
    if _MM_WRITES_FLOAT32 and a.is_cuda and a.dtype in (torch.float16, torch.bfloat16):
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a, b).float()


def bias_grad_float32(grad2d: torch.Tensor) -> torch.Tensor:
    """The column sums of a (rows, features) gradient in float32: a bias's gradient.

    On CUDA a 16-bit gradient is summed by one GEMV with a ones vector writing float32 (``mm_float32``), which reads
    the gradient once at full bandwidth; PyTorch's reduction over the rows of a 16-bit matrix took 1.8 ms of a
    VMamba-T training step on the H200 (2026-11-30 profile, ``benchmarks/profile_step.py``).
    """
    if _MM_WRITES_FLOAT32 and grad2d.is_cuda and grad2d.dtype in (torch.float16, torch.bfloat16):
        return torch.mm(grad2d.t(), _ones_column(grad2d.shape[0], grad2d.dtype, grad2d.device),
                        out_dtype=torch.float32).view(-1)
    return grad2d.sum(0, dtype=torch.float32)


_ONES_COLUMNS = {}


def _ones_column(rows: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A (rows, 1) column of ones, kept per shape, dtype and device (never written): one fill kernel less per bias
    gradient, of which a VMamba-T training step has 28 (its MLPs' biases)."""
    key = (rows, dtype, device)
    ones = _ONES_COLUMNS.get(key)
    if ones is None:
        if len(_ONES_COLUMNS) >= 64:  # many batch sizes: start over rather than grow
            _ONES_COLUMNS.clear()
        ones = _ONES_COLUMNS[key] = torch.ones(rows, 1, device=device, dtype=dtype)
    return ones


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
        # Runs on every call: the submodules come from ``_modules`` directly (``nn.Module.__getattr__`` costs about a
        # microsecond per lookup).
        modules = self._modules
        fc1, act, fc2 = modules['fc1'], modules['act'], modules['fc2']
        if not (self.fused_node and isinstance(modules['drop'], nn.Identity) and _gelu_approximation(act) is not None
                and type(fc1) is nn.Linear and type(fc2) is nn.Linear and plain_eager()
                and without_hooks(fc1, act, fc2)):
            return None
        norm_weight = () if norm is None or norm.weight is None else (norm.weight,)
        return node_dtype(x, fc1._parameters['weight'], fc2._parameters['weight'], *norm_weight)

    @staticmethod
    def _folds(x: torch.Tensor, norm: nn.Module) -> bool:
        """Whether the node can run ``norm``: a LayerNorm over the last dim of contiguous x, on the Triton kernel."""
        return type(norm) is ChannelLastLayerNorm and x.is_contiguous() and norm.runs_triton(x) and without_hooks(norm)

    def forward(self, x: torch.Tensor, norm: Optional[nn.Module] = None, residual: bool = False,
                branch_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``fc2(act(fc1(x)))`` (with dropout), of ``norm(x)`` when ``norm`` is given (a block's pre-norm, which eager
        training can then fold into the MLP's autograd node).

        With ``residual`` the input is added to the output (a pre-norm block's residual branch, ``x +
        mlp(norm(x))``, with the output times ``branch_scale``, a drop-path's per-sample factor, when given); the node
        with a folded norm then adds the residual's gradient as the norm's backward writes x's gradient, instead of
        autograd summing the two gradients of x in a separate kernel."""
        if branch_scale is not None and not residual:
            raise ValueError('Mlp: branch_scale scales the residual branch; it needs residual=True')
        identity = x
        if norm is not None and not self._folds(x, norm):
            x, norm = norm(x), None
        dtype = self._node(x, norm)
        # The node adds the residual only when it runs the norm, so that its input is the residual.
        node_residual = residual and norm is not None and dtype is not None
        node_scale = branch_scale if node_residual else None
        if dtype is not None:
            norm_args = (None, None, None) if norm is None else (norm.weight, norm.bias, norm.eps)
            fc1, fc2 = self._modules['fc1']._parameters, self._modules['fc2']._parameters  # Linear layers (``_node``)
            params = (fc1['weight'], fc1['bias'], fc2['weight'], fc2['bias'])
            args = (x, *norm_args, *params, _gelu_approximation(self._modules['act']), dtype)
            if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                               for t in (x, *norm_args[:2], *params)):
                out = _LinearGeluLinear.apply(*args, node_residual, node_scale)
            else:
                # Inference: the same ops without a node, with the weights' casts kept between calls.
                out = _mlp_forward(x, *norm_args, *kept_casts(self, '_casts', params, dtype), *args[-2:],
                                   residual=node_residual, scale=node_scale)[0]
        else:
            if norm is not None:
                x = norm(x)
            out = self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
        if not residual or node_residual:
            return out
        return add_residual(identity, out, branch_scale)


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

    def forward(self, x: torch.Tensor, norm: Optional[nn.Module] = None, residual: bool = False,
                branch_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``fc2(x * act(z))`` of ``norm(x)`` when ``norm`` is given, plus x with ``residual`` (the output times
        ``branch_scale`` when given; as ``Mlp``)."""
        identity = x
        if norm is not None:
            x = norm(x)
        x, z = self.fc1(x).chunk(2, dim=self.channel_dim)
        out = self.drop(self.fc2(x * self.act(z)))
        return add_residual(identity, out, branch_scale) if residual else out
