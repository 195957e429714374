"""Every Triton kernel of the scan core and the LayerNorm compiles for an H100/H200 (sm_90), on this GPU-less machine.

The rest of the suite runs the kernels in Triton's interpreter, which accepts code the GPU compiler rejects (a
constexpr reassigned in an unrolled loop, a non-constexpr scan axis). Triton ships ptxas, so compiling to a cubin
for sm_90 needs no GPU: this catches those errors in CI. Each kernel is compiled with every flag on and with every
flag off, at one representative tile.
"""
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip('triton')

SCRIPT = textwrap.dedent('''
    import sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from vmamba_zoo.kernels import layer_norm as ln
    from vmamba_zoo.kernels import selective_scan as ss

    ACTIVATIONS = {'u_ptr', 'delta_ptr', 'B_ptr', 'C_ptr', 'x_ptr', 'y_ptr', 'dy_ptr', 'dx_ptr'}
    FLOATS = {'eps'}
    FLAGS = ('HAS_D', 'HAS_BIAS', 'SOFTPLUS', 'IDENTITY', 'ACCUMULATE', 'STORE_STATES', 'HAS_DSTATES', 'HAS_DLAST',
             'SCATTER_ATOMIC', 'U_SHARED', 'REVERSE', 'HAS_FORWARD_ROUTES', 'HAS_WEIGHT', 'STORE_STATS')
    SIZES = dict(KINDS=0 | 1 << 2 | 2 << 4 | 3 << 6, NUM_ROUTES=4, CHUNK=64, BLOCK_D=4, BLOCK_R=128, HP=16, WP=16,
                 LANES=64, NP=2, NUM_STAGES=3, BLOCK_C=128, BLOCK_P=32, T=8, V=4, WALKS=3, SLABS=0, NUM_SLABS=1)
    KERNELS = [(ss, name) for name in (
        '_chunk_summary_fwd_kernel', '_chunk_state_passing_kernel', '_scan_chunk_fwd_kernel',
        '_chunk_summary_bwd_kernel', '_scan_chunk_bwd_kernel', '_raster_scan_fwd_kernel', '_raster_scan_bwd_kernel',
        '_raster_rows_fwd_kernel', '_raster_rows_bwd_kernel', '_vector_rows_fwd_kernel', '_vector_rows_bwd_kernel')]
    KERNELS += [(ln, '_layer_norm_2d_fwd_kernel'), (ln, '_layer_norm_2d_bwd_kernel')]

    def jit_function(kernel):
        while not isinstance(kernel, triton.runtime.jit.JITFunction):  # autotuner -> JITFunction
            kernel = kernel.fn
        return kernel

    failures = []
    for module, name in KERNELS:
        fn = jit_function(getattr(module, name))
        for flag in (True, False):
            constants = {arg: (flag if arg in FLAGS else SIZES[arg]) for arg in fn.arg_names
                         if arg in FLAGS or arg in SIZES}
            signature = {}
            for arg in fn.arg_names:
                if arg in constants:
                    signature[arg] = 'constexpr'
                elif arg.endswith('_ptr'):
                    signature[arg] = '*bf16' if arg in ACTIVATIONS else '*i32' if arg == 'routes_ptr' else '*fp32'
                else:
                    signature[arg] = 'fp32' if arg in FLOATS else 'i32'
            source = ASTSource(fn, signature, constexprs={(fn.arg_names.index(k),): v for k, v in constants.items()})
            try:
                triton.compile(source, target=GPUTarget('cuda', 90, 32), options={'num_warps': 4})
            except Exception as exc:  # report every kernel, not just the first failure
                failures.append(f'{name} flags={flag}: {type(exc).__name__}: {str(exc)[-800:]}')
    print('\\n'.join(failures) if failures else 'ALL_COMPILED')
    sys.exit(1 if failures else 0)
''')


def test_every_triton_kernel_compiles_for_sm90(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET='0', TRITON_CACHE_DIR=str(tmp_path / 'cache'))
    done = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0 and 'ALL_COMPILED' in done.stdout, done.stdout[-6000:] + done.stderr[-3000:]
