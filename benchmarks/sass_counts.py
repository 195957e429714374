"""SASS instruction counts of the row-walk scan kernels, per walk loop, compiled for sm_90 without a GPU.

The instructions one row costs were taken as a GPU-free proxy for the row-walk kernels' speed. That held for the
forward (``benchmarks/results/README.md``), but an 8-12 % cut in the backward's left its time unchanged on the H200
(2026-11-30), so for the backward they are a count, not a prediction. ``--maxnreg`` shows what capping the registers
(more resident warps per SM) costs in spills. This compiles ``_raster_rows_fwd_kernel`` and ``_raster_rows_bwd_kernel``
for sm_90 with Triton's bundled ptxas at the tiles VMamba-T's stages use (cross pattern, bf16 activations, D, delta
bias and softplus; pointers and integers specialised as at run time). It disassembles them with Triton's bundled
cuobjdump, finds each loop (a backward branch) and prints its instruction count and most common opcodes, with the
registers and spills ptxas reports.

``--chunked`` compiles the chunk-parallel kernels instead (the d_state > 8 path) at the programs the autotuner picked
on the H200 at d_state 16, and adds the lane shuffles (``shfl.sync``) per source line, from the PTX line table.
``--contiguous`` compiles their twins for route-ordered operands (``multi_scan_2d(..., fused=False)``,
``selective_scan_fn``), specialised on the map size: Triton then vectorises the loads, a lane holds several
consecutive steps and the forward lane scans need few shuffles.

Usage: TRITON_INTERPRET=0 python benchmarks/sass_counts.py [--kernel fwd|bwd] [--layout nchw|nhwc] [--maxnreg N]
    [--chunked] [--json OUT.json]
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scan as bs  # noqa: E402

ACTIVATIONS = {'u_ptr', 'delta_ptr', 'B_ptr', 'C_ptr'}
CROSS_KINDS = 0 | 1 << 2 | 2 << 4 | 3 << 6
FLAGS = dict(KINDS=CROSS_KINDS, NUM_ROUTES=4, U_SHARED=True, HAS_D=True, HAS_BIAS=True, SOFTPLUS=True,
             ACCUMULATE=True, STORE_STATES=False, HAS_FORWARD_ROUTES=True, HAS_DSTATES=False, HAS_DLAST=False, NP=1,
             NUM_STAGES=1, V=1)  # V: the one-lane backward not told its rows are aligned
# (kernel, lanes, channels per program, warps, (D, H, W), layout) at VMamba-T's stages: the forward's and the
# backward's fixed programs (kernels/selective_scan.py, from the 2026-11-30 H200 sweeps and in-model timings) on
# contiguous (NCHW) maps, and channel-last (NHWC) maps at 56x56 and 28x28, where a program spans several channels
# for its loads to be coalesced.
CASES = (('_raster_rows_fwd_kernel', 64, 1, 1, (96, 56, 56), 'nchw'),
         ('_raster_rows_fwd_kernel', 32, 1, 1, (192, 28, 28), 'nchw'),
         ('_raster_rows_bwd_kernel', 64, 2, 1, (96, 56, 56), 'nchw'),
         ('_raster_rows_bwd_kernel', 32, 4, 1, (192, 28, 28), 'nchw'),
         ('_raster_rows_bwd_kernel', 16, 4, 1, (384, 14, 14), 'nchw'),
         ('_raster_rows_bwd_kernel', 8, 8, 1, (768, 7, 7), 'nchw'),
         ('_raster_rows_fwd_kernel', 64, 8, 4, (96, 56, 56), 'nhwc'),
         ('_raster_rows_fwd_kernel', 32, 16, 4, (192, 28, 28), 'nhwc'),
         ('_raster_rows_bwd_kernel', 64, 8, 2, (96, 56, 56), 'nhwc'),
         ('_raster_rows_bwd_kernel', 32, 4, 1, (192, 28, 28), 'nhwc'))
# Chunked kernels: (kernel, channels per program, warps, (D, H, W)), cross pattern, d_state 16, bf16 activations,
# 64-step chunks: the H200's autotuner picks of 2026-12-01 at VMamba-T's second stage.
CHUNKED_FLAGS = dict(HAS_D=True, HAS_BIAS=True, SOFTPLUS=True, ACCUMULATE=True, STORE_STATES=False,
                     HAS_DSTATES=False, HAS_DLAST=False, SCATTER_ATOMIC=False, CHUNK=64)
CHUNKED_CASES = (('_chunk_summary_fwd_kernel', 8, 1, (192, 28, 28)), ('_scan_chunk_fwd_kernel', 32, 2, (192, 28, 28)),
                 ('_chunk_summary_bwd_kernel', 8, 1, (192, 28, 28)), ('_scan_chunk_bwd_kernel', 8, 1, (192, 28, 28)))
INSTRUCTION = re.compile(r'\s+/\*([0-9a-f]{4,6})\*/\s+(.*?);')


def jit_function(kernel):
    import triton
    while not isinstance(kernel, triton.runtime.jit.JITFunction):  # autotuner -> JITFunction
        kernel = kernel.fn
    return kernel


def _runtime_ints(dim, height, width, layout):
    """The integer arguments of a B=128, K=4, N=1 call at this stage (shared input, merged output): contiguous
    tensors ('nchw'), or the channel-last layouts of a channel-last model ('nhwc': u and y (B, H, W, D), delta
    (B, H, W, K, D))."""
    positions, routes = height * width, 4
    ints = dict(D=dim, P=positions, H=height, W=width, WV=width, N=1, MAX_LINES=max(height, width),
                stride_u_b=dim * positions,
                stride_u_k=0, stride_dt_b=routes * dim * positions, stride_y_b=dim * positions, stride_y_k=0)
    if layout == 'nchw':
        return dict(ints, stride_u_d=positions, stride_u_p=1, stride_dt_k=dim * positions, stride_dt_d=positions,
                    stride_dt_p=1, stride_y_d=positions, stride_y_p=1)
    return dict(ints, stride_u_d=1, stride_u_p=dim, stride_dt_k=dim, stride_dt_d=1, stride_dt_p=routes * dim,
                stride_y_d=1, stride_y_p=dim)


def _compile_for_sm90(fn, constants, ints, warps, maxnreg=None):
    """(SASS text, ptxas -v output, PTX) of ``fn`` with ``constants`` as its constexprs, specialised as Triton does at
    run time: every pointer 16-byte aligned, every integer of ``ints`` that is a multiple of 16 marked so unless the
    kernel opts out of specialising it (``do_not_specialize``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    signature = {}
    for arg in fn.arg_names:
        if arg in constants:
            signature[arg] = 'constexpr'
        elif arg.endswith('_ptr'):
            signature[arg] = '*bf16' if arg in ACTIVATIONS else '*i32' if arg == 'routes_ptr' else '*fp32'
        else:
            signature[arg] = 'i32'
    attrs = {(index,): [['tt.divisibility', 16]] for index, arg in enumerate(fn.arg_names)
             if arg.endswith('_ptr') or (arg in ints and ints[arg] % 16 == 0 and arg not in fn.do_not_specialize)}
    source = ASTSource(fn, signature, constexprs={(fn.arg_names.index(k),): v for k, v in constants.items()},
                       attrs=attrs)
    options = {'num_warps': warps} if maxnreg is None else {'num_warps': warps, 'maxnreg': maxnreg}
    kernel = triton.compile(source, target=GPUTarget('cuda', 90, 32), options=options)
    tools = Path(triton.__file__).parent / 'backends' / 'nvidia' / 'bin'
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / 'kernel.cubin'
        cubin.write_bytes(kernel.asm['cubin'])
        sass = subprocess.run([str(tools / 'cuobjdump'), '-sass', str(cubin)], capture_output=True, text=True,
                              check=True).stdout
    cap = [] if maxnreg is None else [f'-maxrregcount={maxnreg}']
    ptxas = subprocess.run([str(tools / 'ptxas'), '-arch=sm_90a', '-v', *cap, '-o', os.devnull, '-'],
                           input=kernel.asm['ptx'], capture_output=True, text=True).stderr
    return sass, ptxas, kernel.asm['ptx']


def _constants(fn, flags, ints):
    """``flags`` and every integer argument equal to 1 (which Triton makes a constant) that ``fn`` takes."""
    ones = {k: 1 for k, v in ints.items() if v == 1 and k in fn.arg_names and k not in fn.do_not_specialize}
    return {k: v for k, v in dict(flags, **ones).items() if k in fn.arg_names}


def compile_sass(module, name, lanes, block_d, warps, shape, layout='nchw', maxnreg=None):
    """(SASS text, ptxas -v output) of one row-walk kernel configuration at a stage of B=128, K=4, N=1.
    ``maxnreg`` caps the registers per thread (Triton's ``maxnreg`` option, ptxas's ``-maxrregcount``)."""
    fn = jit_function(getattr(module, name))
    ints = _runtime_ints(*shape, layout)
    constants = _constants(fn, dict(FLAGS, LANES=lanes, BLOCK_D=block_d), ints)
    return _compile_for_sm90(fn, constants, ints, warps, maxnreg)[:2]


def compile_chunked(module, name, block_d, warps, shape, state_dim=16, contiguous=False):
    """(SASS, ptxas -v output, PTX) of one chunk-parallel kernel, specialised as at run time for a B=128, K=4 cross
    scan of a contiguous (D, H, W) map. ``contiguous``: the kernel's twin for route-ordered operands (no route table),
    specialised on the map size too, so that Triton may vectorise the loads."""
    if contiguous:
        name = name[:-len('_kernel')] + '_contiguous_kernel'
    fn = jit_function(getattr(module, name))
    dim, height, width = shape
    positions = height * width
    ints = dict(D=dim, P=positions, L=positions, N=state_dim, NUM_CHUNKS=-(-positions // CHUNKED_FLAGS['CHUNK']),
                stride_u_b=dim * positions, stride_u_k=0, stride_y_b=dim * positions, stride_y_k=0)
    flags = dict(CHUNKED_FLAGS, BLOCK_D=block_d, IDENTITY=contiguous)  # IDENTITY: no route table
    return _compile_for_sm90(fn, _constants(fn, flags, ints), ints, warps)


def shuffles_by_line(ptx):
    """{'file:line': count} of the ``shfl.sync`` instructions in ``ptx``, attributed through its ``.loc`` table."""
    files = dict(re.findall(r'\.file\s+(\d+)\s+"([^"]+)"', ptx))
    where, counts = None, collections.Counter()
    for line in ptx.splitlines():
        loc = re.match(r'\s*\.loc\s+(\d+)\s+(\d+)', line)
        if loc:
            where = f"{os.path.basename(files.get(loc.group(1), '?'))}:{loc.group(2)}"
        elif 'shfl.sync' in line:
            counts[where] += 1
    return dict(counts.most_common())


def loop_counts(sass):
    """Per loop (backward branch), in program order: its instruction count and top opcodes."""
    instructions = [(int(m.group(1), 16), m.group(2)) for m in map(INSTRUCTION.match, sass.splitlines()) if m]
    loops = []
    for address, text in instructions:
        target = re.search(r'BRA\s+0x([0-9a-f]+)', text)
        if target and int(target.group(1), 16) < address:
            body = [t for a, t in instructions if int(target.group(1), 16) <= a <= address]
            opcodes = collections.Counter(re.sub(r'^@!?U?P\w+\s+', '', t).split()[0].split('.')[0] for t in body)
            loops.append(dict(instructions=len(body), top=dict(opcodes.most_common(6))))
    return len(instructions), loops


def _sass_summary(sass, ptxas):
    """Instruction total, loops, registers, spilled bytes and local-memory instructions of one compiled kernel."""
    total, loops = loop_counts(sass)
    registers = re.search(r'Used (\d+) registers', ptxas)
    spills = re.search(r'(\d+) bytes spill stores', ptxas)
    return dict(total=total, loops=loops, registers=int(registers.group(1)) if registers else None,
                spill_bytes=int(spills.group(1)) if spills else None,
                local_memory_ops=sum(1 for line in sass.splitlines() if re.search(r'\b(LDL|STL)\b', line)))


def _chunked_rows(args, ss):
    rows = []
    for name, block_d, warps, shape in CHUNKED_CASES:
        if args.kernel and f'_{args.kernel}_' not in name:
            continue
        sass, ptxas, ptx = compile_chunked(ss, name, block_d, warps, shape, contiguous=args.contiguous)
        row = dict(kernel=name, contiguous=args.contiguous, channels=block_d, warps=warps, stage=list(shape),
                   **_sass_summary(sass, ptxas), shuffles_by_line=shuffles_by_line(ptx))
        rows.append(row)
        print(f"{name} channels={block_d} warps={warps}: {row['total']} instructions, loops "
              f"{', '.join(str(loop['instructions']) for loop in row['loops'])}, {row['registers']} registers; "
              f"shuffles by line {row['shuffles_by_line']}", flush=True)
    return rows


def _row_walk_rows(args, ss):
    rows = []
    for name, lanes, block_d, warps, shape, layout in CASES:
        if (args.kernel and f'_{args.kernel}_' not in name) or (args.layout and layout != args.layout):
            continue
        sass, ptxas = compile_sass(ss, name, lanes, block_d, warps, shape, layout, args.maxnreg)
        row = dict(kernel=name, layout=layout, lanes=lanes, channels=block_d, warps=warps, stage=list(shape),
                   maxnreg=args.maxnreg, **_sass_summary(sass, ptxas))
        row['per_row'] = sum(loop['instructions'] for loop in row['loops'])
        rows.append(row)
        print(f"{name} {layout} lanes={lanes} channels={block_d} warps={warps}: {row['per_row']} instructions per row "
              f"in {len(row['loops'])} loops ({', '.join(str(loop['instructions']) for loop in row['loops'])}), "
              f"{row['registers']} registers, {row['spill_bytes']} bytes spilled, "
              f"{row['local_memory_ops']} local-memory instructions", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--json', default='')
    parser.add_argument('--kernel', choices=['fwd', 'bwd'], default=None, help='only the forward or the backward')
    parser.add_argument('--layout', choices=['nchw', 'nhwc'], default=None, help='only this layout')
    parser.add_argument('--maxnreg', type=int, default=None,
                        help='cap the registers per thread (more resident warps per SM, possibly spills)')
    parser.add_argument('--chunked', action='store_true',
                        help='the chunk-parallel kernels (d_state > 8) instead of the row walk, with shuffles per line')
    parser.add_argument('--contiguous', action='store_true',
                        help='with --chunked: the twins for route-ordered operands (specialised on the map size)')
    args = parser.parse_args()
    if os.environ.get('TRITON_INTERPRET', '0') not in ('', '0'):
        sys.exit('run with TRITON_INTERPRET=0: the interpreter defines no compilable kernels')
    bs.import_kernels()  # makes vmamba_zoo.kernels importable from an uninstalled checkout
    from vmamba_zoo.kernels import selective_scan as ss
    results = (_chunked_rows if args.chunked else _row_walk_rows)(args, ss)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == '__main__':
    main()
