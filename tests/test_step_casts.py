"""The batched casts of parameters for fused training nodes (``vmamba_zoo.layers.eager.step_casts``)."""
import gc

import pytest
import torch

from vmamba_zoo.layers import eager
from vmamba_zoo.layers.eager import step_casts


@pytest.fixture
def fresh_pool(monkeypatch):
    pool = eager._StepCasts()
    monkeypatch.setattr(eager, '_step_casts', pool)
    return pool


def _count_concatenations(monkeypatch):
    calls = []
    real_cat = torch.cat
    monkeypatch.setattr(torch, 'cat', lambda tensors, *a, **k: calls.append(len(tensors)) or real_cat(tensors, *a, **k))
    return calls


def test_casts_equal_to_and_carry_no_history(fresh_pool):
    weight, bias = torch.randn(5, 3, requires_grad=True), torch.randn(5, requires_grad=True)
    casts = step_casts([weight, None, bias], torch.bfloat16)
    assert casts[1] is None
    for cast, param in zip((casts[0], casts[2]), (weight, bias)):
        assert cast.dtype == torch.bfloat16 and cast.shape == param.shape and not cast.requires_grad
        assert torch.equal(cast, param.detach().to(torch.bfloat16))


def test_nothing_to_cast_or_disabled_gives_none(fresh_pool, monkeypatch):
    weight = torch.randn(4, 4)
    assert step_casts([weight, None], torch.float32) is None
    monkeypatch.setattr(step_casts, 'enabled', False)
    assert step_casts([weight], torch.bfloat16) is None
    with torch.inference_mode():
        frozen = torch.randn(3)
    monkeypatch.setattr(step_casts, 'enabled', True)
    assert step_casts([frozen], torch.bfloat16) is None


def test_a_changed_parameter_recasts_every_changed_one_in_one_batch(fresh_pool, monkeypatch):
    """After an optimizer-like in-place update of all parameters, the first request casts all of them at once; the
    other layers' requests then cast nothing, and earlier casts keep their values (nothing is written in place)."""
    layers = [[torch.randn(4, 3, requires_grad=True), torch.randn(4, requires_grad=True)] for _ in range(3)]
    before = [step_casts(params, torch.bfloat16) for params in layers]
    kept = [c.clone() for casts in before for c in casts]
    with torch.no_grad():
        for params in layers:
            for p in params:
                p.add_(1.0)
    concatenations = _count_concatenations(monkeypatch)
    after = [step_casts(params, torch.bfloat16) for params in layers]
    assert concatenations == [6]  # one batch: all six changed parameters
    for params, casts in zip(layers, after):
        for p, c in zip(params, casts):
            assert torch.equal(c, p.detach().to(torch.bfloat16))
    assert all(torch.equal(c, k) for c, k in zip([c for casts in before for c in casts], kept))
    again = [step_casts(params, torch.bfloat16) for params in layers]
    assert concatenations == [6]  # unchanged since: no new batch
    assert all(a is b for casts, kept_casts in zip(again, after) for a, b in zip(casts, kept_casts))


def test_unchanged_parameters_are_not_recast(fresh_pool, monkeypatch):
    weight = torch.randn(3, 3, requires_grad=True)
    first = step_casts([weight], torch.float16)
    concatenations = _count_concatenations(monkeypatch)
    assert step_casts([weight], torch.float16)[0] is first[0]
    assert concatenations == []


def test_dead_parameters_are_forgotten(fresh_pool):
    weight = torch.randn(3, requires_grad=True)
    step_casts([weight], torch.bfloat16)
    del weight
    gc.collect()
    other = torch.randn(2, requires_grad=True)
    step_casts([other], torch.bfloat16)
    assert len(fresh_pool.entries) == 1
