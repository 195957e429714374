"""Helpers of the layers' eager shortcuts: the autocast dtype of a call, the compute dtype and hook check of a fused
autograd node, and tensors derived from parameters (casts, A = -exp(A_logs)) kept between calls without gradients."""
from typing import Callable, Optional, Sequence

import torch
from torch.nn.modules import module as _module

__all__ = ['add_residual', 'autocast_dtype', 'derived_until_changed', 'drop_path_scale', 'kept_casts', 'node_dtype',
           'own_parameters', 'without_hooks']

_AUTOCAST_DEVICE_TYPES = ('cuda', 'cpu', 'xpu', 'mps')  # torch.is_autocast_enabled raises for others (meta)


def autocast_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    """The autocast dtype when autocast is on for x's device type, else None."""
    device_type = x.device.type
    if device_type in _AUTOCAST_DEVICE_TYPES and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def derived_until_changed(module: torch.nn.Module, slot: str, params: Sequence[torch.Tensor], tag,
                          derive: Callable):
    """``derive()``, computed once and kept on ``module`` until a parameter changes, in calls without gradients.

    An eager bf16 inference step of VMamba-T on the H200 was paced by the host issuing kernels (2026-11-30 profiles),
    and every cast of a weight to the autocast dtype is one. The result is kept under ``slot`` in the module's
    ``__dict__`` (not a buffer: state dicts are unchanged) with the parameters' storage and version counters, so an
    optimizer step, ``load_state_dict`` or ``.to()`` invalidates it. With gradients, while tracing or compiling, and
    for parameters made under inference mode (which have no version counter), it derives on every call; a call with
    gradients also drops the kept result, so that training does not hold it.

    Args:
        module: Where the result is kept.
        slot: Attribute name, one per derivation.
        params: The parameters ``derive`` reads.
        tag: Anything else the result depends on (a dtype), compared by equality.
        derive: Computes the result from the parameters.
    """
    # Tracers and compilers see a plain derivation: dynamo cannot trace the module's __dict__ (a graph break in
    # every block of a compiled training step on the H200, whose recompiles then failed in inductor).
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return derive()
    if torch.is_grad_enabled():
        module.__dict__.pop(slot, None)
        return derive()
    if any(p.is_inference() for p in params):
        return derive()
    key = (tag,) + tuple((p.device, p.data_ptr(), p._version) for p in params)
    cached = module.__dict__.get(slot)
    if cached is None or cached[0] != key:
        cached = module.__dict__[slot] = (key, derive())
    return cached[1]


def node_dtype(x: torch.Tensor, *params: torch.Tensor) -> Optional[torch.dtype]:
    """The compute dtype of a fused training node: autocast's, or the common dtype of x and the parameters (None
    when they differ, where the composite path's ops would raise or promote)."""
    dtype = autocast_dtype(x)
    if dtype is not None:
        return dtype
    return x.dtype if all(p.dtype == x.dtype for p in params) else None


def own_parameters(module: torch.nn.Module, names: Sequence[str]) -> tuple:
    """``module``'s parameters ``names`` (None for one registered as None), read from its parameter dict: a fused
    node gathers its tensors on every call, and ``nn.Module.__getattr__``, which attribute access falls back to for
    parameters, costs about a microsecond per lookup. A name missing from the dict (a parametrized or otherwise
    computed attribute) is read as an attribute."""
    parameters = module._parameters
    return tuple(parameters[name] if name in parameters else getattr(module, name) for name in names)


def without_hooks(*modules: torch.nn.Module) -> bool:
    """Whether no forward or backward hook, global or on one of ``modules``, would see their calls: a fused node that
    runs their computation without calling them applies only then."""
    if _module._global_forward_hooks or _module._global_forward_pre_hooks or _module._global_backward_hooks \
            or _module._global_backward_pre_hooks:
        return False
    for m in modules:  # a loop, not any() over a generator: this runs for every fused node call
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return False
    return True


def kept_casts(module: torch.nn.Module, slot: str, params: Sequence[Optional[torch.Tensor]], dtype: torch.dtype):
    """``params`` cast to ``dtype`` (None stays None), kept on ``module`` between inference calls
    (``derived_until_changed``; with ``kept_casts.enabled = False``, cast on every call).

    A fused layer's inference path casts its Linear and conv weights to the autocast dtype on every call otherwise,
    one kernel each (seven per VSS block).
    """
    present = [p for p in params if p is not None]

    def cast():
        casts = iter([p.to(dtype) for p in present])
        return tuple(None if p is None else next(casts) for p in params)
    if not kept_casts.enabled:
        return cast()
    return derived_until_changed(module, slot, present, dtype, cast)


kept_casts.enabled = True


def add_residual(residual: torch.Tensor, out: torch.Tensor, scale: Optional[torch.Tensor] = None,
                 overwrite: bool = False) -> torch.Tensor:
    """``residual + out * scale`` (``residual + out`` without ``scale``) for a layer that returns its block's residual
    sum.

    Args:
        residual: The block's input.
        out: The branch's output.
        scale: A per-sample factor (B, 1, ..., 1) of the branch, a drop-path's: used in ``out``'s dtype, as timm's
            ``DropPath`` draws its factor in its input's.
        overwrite: ``out`` is a fused node's own fresh tensor, which nothing else sees: without ``scale`` the sum is
            written into it when both have one dtype (no allocation). Module outputs, which a hook may have kept,
            are left alone.

    With ``scale``, one ``addcmul`` adds the scaled branch (one kernel instead of a product and a sum). Otherwise, as
    for a float32 residual stream under autocast, PyTorch's promoting sum is returned.
    """
    same = out.dtype == residual.dtype and out.shape == residual.shape
    if scale is not None:
        scale = scale.to(out.dtype)
        return torch.addcmul(residual, out, scale) if same else residual + out * scale
    if same and overwrite:
        return out.add_(residual)
    return residual + out


def drop_path_scale(x: torch.Tensor, drop_path: torch.nn.Module, training: bool) -> Optional[torch.Tensor]:
    """The per-sample factor (B, 1, ..., 1) that timm's ``DropPath`` module would multiply a branch of x's shape by in
    this call: 0 for a dropped sample, else 1 / keep probability (1 without ``scale_by_keep``), drawn as timm draws it
    in the branch's dtype (autocast's, else x's); None where it does nothing (evaluation, ``nn.Identity``, a zero
    rate). For layers that fold the drop-path into their residual sum (``add_residual``)."""
    if not training or type(drop_path) is torch.nn.Identity or drop_path.drop_prob == 0.:
        return None
    keep = 1. - drop_path.drop_prob
    scale = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=autocast_dtype(x) or x.dtype).bernoulli_(keep)
    return scale.div_(keep) if keep > 0. and drop_path.scale_by_keep else scale
