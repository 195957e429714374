"""Channel-first LayerNorm kernel (kernels/layer_norm.py) against its float64 reference, in Triton's interpreter."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vmamba_zoo.kernels import layer_norm as ln
from vmamba_zoo.layers import LayerNorm2d

pytest.importorskip('triton')


def _inputs(shape, dtype, affine=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 3 + 1).to(dtype)
    channels = shape[1]
    weight = torch.randn(channels, generator=gen) if affine else None
    bias = torch.randn(channels, generator=gen) if affine else None
    return x, weight, bias


def _rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize('shape', [(2, 5, 3, 7), (1, 96, 4, 4), (3, 1, 2, 2), (1, 33, 1, 40), (2, 40, 9, 13)])
@pytest.mark.parametrize('dtype, tol', [(torch.float32, 1e-6), (torch.float16, 2e-3)])
@pytest.mark.parametrize('affine', [True, False])
def test_forward_and_backward_match_the_reference(shape, dtype, tol, affine):
    x, weight, bias = _inputs(shape, dtype, affine)
    leaves = [t.requires_grad_() for t in (x, weight, bias) if t is not None]
    y = ln.layer_norm_2d(x, weight, bias, 1e-5, backend='triton')
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous()
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    x64, w64, b64 = (ref_leaves + [None, None])[:3] if affine else (ref_leaves[0], None, None)
    y_ref = ln.layer_norm_2d_ref(x64, w64, b64, 1e-5)
    assert _rel_err(y, y_ref) < tol
    dy = torch.randn(shape, dtype=torch.float64)
    grads = torch.autograd.grad(y, leaves, dy.to(dtype))
    grads_ref = torch.autograd.grad(y_ref, ref_leaves, dy)
    for name, g, g_ref in zip(('x', 'weight', 'bias'), grads, grads_ref):
        assert g.dtype == (dtype if name == "x" else torch.float32)
        assert _rel_err(g, g_ref) < 5 * tol, name


# (tile elements, warps, most pixels, fewest programs): the default, which gives these small maps one pixel block per
# program; programs that loop over several pixel blocks, with a partial last one; and a bound on the programs that
# cuts the blocks per program.
@pytest.mark.parametrize('tiling', [None, (4096, 4, 128, 1), (64, 4, 128, 1), (64, 4, 128, 8)])
@pytest.mark.parametrize('rows', [True, False])
def test_backward_tilings_match_the_reference(monkeypatch, tiling, rows):
    if tiling is not None:
        monkeypatch.setattr(ln, '_BWD_TILING', tiling)
    ln._launch_bwd_tiles.cache_clear()
    try:
        x, weight, bias = _inputs((2, 40, 9, 13), torch.float32)
        if tiling == (64, 4, 128, 1):
            assert ln._launch_bwd_tiles(*ln._geometry(x.permute(0, 2, 3, 1) if rows else x, rows)[:3])[3] > 1
        leaves = [t.requires_grad_() for t in (x, weight, bias)]
        if rows:
            y = ln.layer_norm_2d(x.permute(0, 2, 3, 1), weight, bias, 1e-5, backend='triton', channel_dim=-1)
            y = y.permute(0, 3, 1, 2)
        else:
            y = ln.layer_norm_2d(x, weight, bias, 1e-5, backend='triton')
        ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
        y_ref = ln.layer_norm_2d_ref(*ref_leaves, 1e-5)
        dy = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        for name, g, g_ref in zip(('x', 'weight', 'bias'), torch.autograd.grad(y, leaves, dy.float()),
                                  torch.autograd.grad(y_ref, ref_leaves, dy)):
            assert _rel_err(g, g_ref) < 5e-6, name
    finally:
        ln._launch_bwd_tiles.cache_clear()


@pytest.mark.parametrize('in_format', [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize('out_format', [None, torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize('backend', ['triton', 'torch'])
def test_reads_and_writes_either_layout(in_format, out_format, backend):
    """NCHW or NHWC in, the input's layout (None) or the requested one out; gradients in the input's layout."""
    x, weight, bias = _inputs((2, 6, 3, 5), torch.float32)
    x = x.contiguous(memory_format=in_format).requires_grad_()
    y = ln.layer_norm_2d(x, weight, bias, 1e-5, backend=backend, memory_format=out_format)
    assert y.is_contiguous(memory_format=out_format or in_format)
    x64 = x.detach().double().requires_grad_()
    y_ref = ln.layer_norm_2d_ref(x64, weight.double(), bias.double(), 1e-5)
    assert _rel_err(y, y_ref) < 1e-6
    dy = torch.randn(y.shape, dtype=torch.float64)
    (dx,) = torch.autograd.grad(y, x, dy.float().contiguous(memory_format=torch.channels_last))
    (dx_ref,) = torch.autograd.grad(y_ref, x64, dy)
    assert _rel_err(dx, dx_ref) < 1e-5
    if backend == 'triton':
        assert dx.is_contiguous(memory_format=in_format)


def test_output_dtype_is_independent_of_the_input():
    x, weight, bias = _inputs((2, 8, 3, 3), torch.float32)
    y = ln.layer_norm_2d(x, weight, bias, backend='triton', out_dtype=torch.float16)
    assert y.dtype == torch.float16
    assert _rel_err(y, ln.layer_norm_2d_ref(x.double(), weight.double(), bias.double())) < 1e-3


def test_gradcheck_triton_float64():
    x, weight, bias = (t.double().requires_grad_() for t in _inputs((2, 3, 2, 3), torch.float64))
    assert torch.autograd.gradcheck(lambda *a: ln.layer_norm_2d(*a, 1e-5, backend='triton'), (x, weight, bias))


def test_torch_path_is_pytorch_layer_norm():
    x, weight, bias = _inputs((2, 6, 4, 5), torch.float32)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (6,), weight, bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln.layer_norm_2d(x, weight, bias, 1e-6, backend='torch'), expected, rtol=0, atol=0)
    assert ln.layer_norm_2d(x, weight, bias, backend='auto').dtype == torch.float32  # CPU tensors take this path


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 2), channels=st.integers(1, 40), height=st.integers(1, 9), width=st.integers(1, 9))
def test_any_shape(batch, channels, height, width):
    x, weight, bias = _inputs((batch, channels, height, width), torch.float32)
    y = ln.layer_norm_2d(x, weight, bias, backend='triton')
    assert _rel_err(y, ln.layer_norm_2d_ref(x.double(), weight.double(), bias.double())) < 1e-5


def test_every_output_element_is_written(monkeypatch):
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float('nan')) if t.is_floating_point() else t

    monkeypatch.setattr(torch, 'empty', poisoned_empty)
    x, weight, bias = (t.requires_grad_() for t in _inputs((2, 7, 5, 3), torch.float32))
    y = ln.layer_norm_2d(x, weight, bias, backend='triton')
    grads = torch.autograd.grad(y, (x, weight, bias), torch.ones_like(y))
    assert not y.isnan().any() and not any(g.isnan().any() for g in grads)


@pytest.mark.parametrize('shape', [(2, 3, 5, 6), (7, 6), (6,), (2, 1, 3, 40), (300, 20), (70, 200), 'transposed'])
@pytest.mark.parametrize('dtype, tol', [(torch.float32, 1e-6), (torch.float16, 2e-3)])
def test_last_dim_of_any_tensor_matches_the_reference(shape, dtype, tol):
    """``channel_dim=-1`` is nn.LayerNorm over the last dim of a tensor of any rank, read as one image of rows;
    a non-contiguous input is copied first. Output contiguous, in x's dtype; float64 reference."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 4, generator=gen).transpose(1, 2) if shape == 'transposed' else torch.randn(
        shape, generator=gen)
    x = (x * 3 + 1).to(dtype).requires_grad_()
    channels = x.shape[-1]
    weight, bias = (torch.randn(channels, generator=gen).requires_grad_() for _ in range(2))
    y = ln.layer_norm_2d(x, weight, bias, 1e-5, backend='triton', channel_dim=-1)
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous()
    leaves = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    y_ref = F.layer_norm(leaves[0], (channels,), leaves[1], leaves[2], 1e-5)
    assert _rel_err(y, y_ref) < tol
    dy = torch.randn(x.shape, dtype=torch.float64, generator=gen)
    grads = torch.autograd.grad(y, (x, weight, bias), dy.to(dtype))
    for name, g, g_ref in zip(('x', 'weight', 'bias'), grads, torch.autograd.grad(y_ref, leaves, dy)):
        assert _rel_err(g, g_ref) < 5 * tol, name


@pytest.mark.parametrize('call, error, message', [
    (lambda x, w, b: ln.layer_norm_2d(x, w, b, channel_dim=2), ValueError, 'channel_dim must be 1'),
    (lambda x, w, b: ln.layer_norm_2d(x, w, b, channel_dim=-1), ValueError, r'weight must have shape \(3,\)'),
    (lambda x, w, b: ln.layer_norm_2d(x, None, None, channel_dim=-1, memory_format=torch.channels_last),
     ValueError, 'None with channel_dim=-1'),
    (lambda x, w, b: ln.layer_norm_2d(x[0], w, b), ValueError, r'x must be a \(B, C, H, W\) tensor'),
    (lambda x, w, b: ln.layer_norm_2d(x.long(), None, None), TypeError, 'x must be a floating-point'),
    (lambda x, w, b: ln.layer_norm_2d(x, w[:3], b), ValueError, r'weight must have shape \(4,\)'),
    (lambda x, w, b: ln.layer_norm_2d(x, w, b[None]), ValueError, r'bias must have shape \(4,\)'),
    (lambda x, w, b: ln.layer_norm_2d(x, w.to('meta'), b), ValueError, 'weight is on meta'),
    (lambda x, w, b: ln.layer_norm_2d(x, w, b, eps=0.0), ValueError, 'eps must be positive'),
    (lambda x, w, b: ln.layer_norm_2d(x, w, b, out_dtype=torch.int32), TypeError, 'out_dtype must be'),
    (lambda x, w, b: ln.layer_norm_2d(x, w, b, backend='cuda'), ValueError, 'backend must be one of'),
])
def test_bad_input_names_the_argument(call, error, message):
    x, weight, bias = _inputs((2, 4, 3, 3), torch.float32)
    with pytest.raises(error, match=message):
        call(x, weight, bias)


def test_layer_norm_2d_module_runs_the_kernel(monkeypatch):
    """LayerNorm2d routes through layer_norm_2d: the same numbers as nn.LayerNorm over channel-last pixels."""
    module = LayerNorm2d(6)
    with torch.no_grad():
        module.weight.normal_()
        module.bias.normal_()
    x = torch.randn(2, 6, 5, 4)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (6,), module.weight, module.bias, module.eps).permute(0, 3, 1, 2)
    torch.testing.assert_close(module(x), expected)
    monkeypatch.setattr(LayerNorm2d, 'backend', 'triton')
    torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)


def test_too_many_channels_for_the_kernel():
    x = torch.randn(1, ln.MAX_CHANNELS + 1, 1, 2)
    with pytest.raises(ValueError, match=f'handles up to {ln.MAX_CHANNELS} channels'):
        ln.layer_norm_2d(x, None, None, backend='triton')
    assert ln.layer_norm_2d(x, None, None).shape == x.shape  # 'auto' falls back to PyTorch


@pytest.mark.parametrize('out_dtype', [torch.float32, torch.float16])
def test_inference_keeps_no_graph_and_matches_training_forward(out_dtype):
    """Without gradients no statistics are stored (the output stands in for their buffers); the arithmetic stays
    float32 for a 16-bit output too, as in training."""
    x, weight, bias = _inputs((2, 6, 3, 5), torch.float32)
    weight.requires_grad_()
    with torch.no_grad():
        y_inference = ln.layer_norm_2d(x, weight, bias, backend='triton', out_dtype=out_dtype)
    y_training = ln.layer_norm_2d(x, weight, bias, backend='triton', out_dtype=out_dtype)
    assert y_inference.grad_fn is None and y_training.grad_fn is not None
    torch.testing.assert_close(y_inference, y_training, rtol=0, atol=0)


class _FakeCompiled:
    packed_metadata = function = None

    def __init__(self, log, reject=False):
        self.log, self.reject = log, reject

    def run(self, grid_x, grid_y, grid_z, stream, function, packed_metadata, launch_metadata, enter_hook, exit_hook,
            *args):
        if self.reject:
            raise TypeError('launcher takes other arguments')
        self.log.append(('cached', (grid_x, grid_y, grid_z), args))


class _FakeJit:
    arg_names = ['x', 'n', 'scale', 'BLOCK']

    def __init__(self, reject=False):
        self.log, self.reject = [], reject

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.log.append(('jit', grid, args, kwargs))
            return _FakeCompiled(self.log, self.reject)
        return run


def test_cached_launch_reuses_a_compiled_kernel_only_for_the_same_specialization(monkeypatch):
    from vmamba_zoo.kernels._triton_utils import CachedLaunch
    monkeypatch.setattr(CachedLaunch, 'enabled', True)
    kernel = _FakeJit()
    launch = CachedLaunch(kernel)
    x = torch.zeros(16)
    launch((2,), x, 5, 0.5, BLOCK=4, num_warps=1)
    launch((3,), x, 5, 0.25, BLOCK=4, num_warps=1)
    # Tensors reach the compiled launcher as their addresses; constexprs follow the arguments in order.
    assert kernel.log[-1] == ('cached', (3, 1, 1), (x.data_ptr(), 5, 0.25, 4))
    for args, kwargs in (((x, 6, 0.5), dict(BLOCK=4, num_warps=1)),  # another integer
                         ((x[1:], 5, 0.5), dict(BLOCK=4, num_warps=1)),  # a tensor off 16-byte alignment
                         ((x.half(), 5, 0.5), dict(BLOCK=4, num_warps=1)),  # another dtype
                         ((x, 5, 0.5), dict(BLOCK=8, num_warps=1)),  # another constexpr
                         ((x, 5, 0.5), dict(BLOCK=4, num_warps=2))):  # another launch option
        launch((2,), *args, **kwargs)
        assert kernel.log[-1][0] == 'jit', (args, kwargs)


def test_cached_launch_hands_each_tensor_as_its_address_in_place(monkeypatch):
    """Tensors (parameters too) become their addresses at their own positions, among None and scalar arguments;
    a None where a tensor was, or a tensor's address off 16-byte alignment, takes the JIT."""
    from vmamba_zoo.kernels._triton_utils import CachedLaunch
    monkeypatch.setattr(CachedLaunch, 'enabled', True)
    kernel = _FakeJit()
    kernel.arg_names = ['x', 'bias', 'w', 'n', 'eps', 'out', 'BLOCK']
    launch = CachedLaunch(kernel)
    x, w = torch.zeros(16), torch.nn.Parameter(torch.ones(8))
    for _ in range(2):
        launch((1,), x, None, w, 3, 1e-5, x, BLOCK=4)
    assert kernel.log[-1] == ('cached', (1, 1, 1), (x.data_ptr(), None, w.data_ptr(), 3, 1e-5, x.data_ptr(), 4))
    y = torch.ones(16)
    launch((1,), y, None, w, 3, 1e-5, x, BLOCK=4)
    assert kernel.log[-1] == ('cached', (1, 1, 1), (y.data_ptr(), None, w.data_ptr(), 3, 1e-5, x.data_ptr(), 4))
    for args in ((x, x, w, 3, 1e-5, x), (x, None, w, 3, 1e-5, x[1:]), (x, None, w, 3, 1e-5, None)):
        launch((1,), *args, BLOCK=4)
        assert kernel.log[-1][0] == 'jit', args


def test_cached_launch_falls_back_to_the_jit_for_good_when_the_launcher_rejects_the_call(monkeypatch):
    from vmamba_zoo.kernels._triton_utils import CachedLaunch
    monkeypatch.setattr(CachedLaunch, 'enabled', True)
    kernel = _FakeJit(reject=True)
    launch = CachedLaunch(kernel)
    x = torch.zeros(16)
    for _ in range(3):
        launch((2,), x, 5, 0.5, BLOCK=4, num_warps=1)
    assert [entry[0] for entry in kernel.log] == ['jit', 'jit', 'jit']
    assert not CachedLaunch.enabled


class _FakeConfig:
    kwargs = {'BLOCK': 8}
    pre_hook = None

    def all_kwargs(self):
        return dict(self.kwargs, num_warps=4)


class _FakeAutotuned(_FakeJit):
    """An autotuned kernel whose pick is BLOCK=8 on 4 warps; its JIT path evaluates the grid as Triton would, with
    every argument and constexpr."""
    best_config = _FakeConfig()

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            meta = {**dict(zip(self.arg_names, args)), **kwargs, **self.best_config.all_kwargs()}
            self.log.append(('jit', grid(meta), args, kwargs))
            return _FakeCompiled(self.log)
        return run


def test_cached_launch_keeps_an_autotuners_pick_and_evaluates_a_grid_function(monkeypatch):
    from vmamba_zoo.kernels._triton_utils import CachedLaunch
    monkeypatch.setattr(CachedLaunch, 'enabled', True)
    kernel = _FakeAutotuned()
    launch = CachedLaunch(kernel)
    x = torch.zeros(16)
    grid = lambda meta: (meta['n'] // meta['BLOCK'],)  # noqa: E731
    launch(grid, x, 64, 0.5)
    launch(grid, x, 64, 0.5)
    assert kernel.log[-1] == ('cached', (8, 1, 1), (x.data_ptr(), 64, 0.5, 8))


def test_cached_launch_hands_a_config_grid_only_the_constexprs(monkeypatch):
    """A ``ConfigGrid`` gets the constexprs and the autotuner's pick (cached launches) or everything (the JIT's first
    call), and gives the same grid either way."""
    from vmamba_zoo.kernels._triton_utils import CachedLaunch, ConfigGrid
    monkeypatch.setattr(CachedLaunch, 'enabled', True)
    kernel = _FakeAutotuned()
    launch = CachedLaunch(kernel)
    x, seen = torch.zeros(16), []

    def blocks(meta):
        seen.append(sorted(meta))
        return (64 // meta['BLOCK'],)
    for _ in range(2):
        launch(ConfigGrid(blocks), x, 64, 0.5)
    assert kernel.log[0][:2] == ('jit', (8,)) and kernel.log[-1] == ('cached', (8, 1, 1), (x.data_ptr(), 64, 0.5, 8))
    assert seen == [['BLOCK', 'n', 'num_warps', 'scale', 'x'], ['BLOCK', 'num_warps']]


def test_cached_launch_keys_on_the_device(monkeypatch):
    """A compiled kernel's handle belongs to the GPU it was loaded on: the same call on another GPU takes the JIT."""
    from vmamba_zoo.kernels import _triton_utils as triton_utils
    from vmamba_zoo.kernels._triton_utils import CachedLaunch

    class OnDevice(torch.Tensor):  # a CPU tensor that reports a GPU index, as the key reads it
        def get_device(self):
            return self.index

    def on_device(index):
        t = torch.Tensor._make_subclass(OnDevice, torch.zeros(4))
        t.index = index
        return t

    monkeypatch.setattr(CachedLaunch, 'enabled', True)
    monkeypatch.setattr(triton_utils, '_raw_stream', lambda index: 1000 + index)  # no GPU here
    kernel = _FakeJit()
    launch = CachedLaunch(kernel)
    for index in (0, 0, 1):
        launch((2,), on_device(index), 5, 0.5, BLOCK=4, num_warps=1)
    assert [entry[0] for entry in kernel.log] == ['jit', 'cached', 'jit']


@pytest.mark.parametrize('layout', ['rows', torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize('add_layout', ['same', 'other'])
def test_backward_adds_a_second_gradient_of_x_as_it_writes_dx(layout, add_layout):
    """``layer_norm_backward(..., dx_add=g)`` returns dx + g (a residual block's two gradients of x) in x's layout,
    the weight and bias gradients unchanged, whatever g's strides; dx's buffer is poisoned first."""
    rows = layout == 'rows'
    x, weight, bias = _inputs((2, 6, 3, 5), torch.float32)
    x = x.permute(0, 2, 3, 1).contiguous() if rows else x.contiguous(memory_format=layout)
    channel_dim = -1 if rows else 1
    dy = torch.randn(x.shape).contiguous(memory_format=torch.preserve_format)
    dx_add = torch.randn(x.shape, dtype=torch.float16)
    if add_layout == 'other':  # strides that are not x's: the helper lays it out as dx before the kernel reads it
        dx_add = dx_add.transpose(0, 1).contiguous().transpose(0, 1)
    _, stats = ln.layer_norm_forward(x, weight, bias, 1e-5, torch.float32, channel_dim)
    dx, dweight, dbias = ln.layer_norm_backward(x, weight, stats, dy, channel_dim)
    real_empty_like = torch.empty_like
    try:
        torch.empty_like = lambda t, **kw: real_empty_like(t, **kw).fill_(float('nan'))
        dx_sum, dweight_sum, dbias_sum = ln.layer_norm_backward(x, weight, stats, dy, channel_dim, dx_add=dx_add)
    finally:
        torch.empty_like = real_empty_like
    assert dx_sum.stride() == x.stride() and dx_sum.dtype == x.dtype
    torch.testing.assert_close(dx_sum, dx + dx_add.float(), rtol=1e-6, atol=1e-6)
    assert torch.equal(dweight_sum, dweight) and torch.equal(dbias_sum, dbias)
