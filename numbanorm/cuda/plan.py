"""Block and grid sizes of every CUDA launch: the GPU's peer of ``cpu/plan.py``.

Each op's driver asks here how to cover its canonical ``(outer, C, inner)`` view (or its rows),
so the sizing rules live once. The constants are module globals read at call time: the
simulator tests (``tests/cuda/simtools.py``) patch them small so tiny inputs still span several
blocks and every code path runs.

What stands behind them: the hardware limits (1024 threads a block, 65535 blocks in grid.y/z,
64K registers an SM, checked by ``tools/ptx_check.py``) and the H200's 132 SMs. The block
sizes and register budgets themselves were not tuned by a recorded GPU run: that is what
``tools/gpu_check.py`` times when a GPU is lent. Every launch size feeds a reduction order,
so changing one changes the float results at rounding level (the simulator tests bound them).
"""

from __future__ import annotations

#: Largest block the kernels launch; shared arrays are sized for it.
MAX_THREADS = 1024
#: Smallest LN block (one warp on hardware); tests lower it so tiny rows still span threads.
MIN_THREADS = 32
#: Row elements a LN thread keeps in registers; longer rows re-read their tail (from L2).
LN_REGS = 8
#: float32 elements per wide (16-byte) load / store in the LN row kernel, used where the row
#: allows it (length a multiple of it, x and y 16-byte aligned; see ``layer_norm.row_norm``).
LN_VEC = 4
#: BatchNorm block sizes: 1-D blocks for (outer, C, inner>1), (TX, TY) tiles for channels-last.
BN_THREADS = 256
BN_TX = 32
BN_TY = 8
#: Enough blocks to fill the largest GPUs (132 SMs x 4) before a partial gets too small.
BN_TARGET_BLOCKS = 528
#: Fewest elements one BN partial-moments block handles (so tiny inputs use one block).
BN_MIN_PER_BLOCK = 4096
#: Threads of the column-sum kernel of the parameter grads (``ln_param_reduce_kernel``).
PARAM_REDUCE_THREADS = 256
#: grid.z holds the samples of GroupNorm / InstanceNorm.
MAX_SAMPLES = 65535
#: Largest grid.y (the hardware limit).
MAX_GRID_Y = 65535

#: Most blocks the LayerNorm backward launches (each writes one row of grad_weight partials).
LN_BWD_BLOCKS = 528
#: LayerNorm backward register budget per thread: row elements cached (x̂ and dy·γ), and
#: grad_weight/grad_bias column accumulators; with at most LN_BWD_MAX_THREADS threads a block
#: stays within the 64K registers of an SM (tools/ptx_check.py checks it: sm_90 float32
#: needs 168 registers per thread, float64 233). Rows up to 4 * 256 elements are cached between
#: the reduction and the write; columns up to 16 * 256 accumulate in registers, further ones in
#: the block's float64 partial row in global memory.
LN_BWD_REGS = 4
LN_BWD_WREGS = 16
LN_BWD_MAX_THREADS = 256


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def threads(n: int, cap: int) -> int:
    """A power-of-two block size for ``n`` items, within [MIN_THREADS, cap]."""
    return max(MIN_THREADS, min(cap, _next_pow2(n)))


def one_thread_each(n: int, cap: int | None = None) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) of one thread per item (channel, group): the finalize kernels."""
    T = threads(n, BN_THREADS if cap is None else cap)
    return (_cdiv(n, T),), (T,)


def ln_row_launch(D: int, vec: int, regs: int) -> tuple[int]:
    """The block of the LN row kernel (one row per block): enough threads that ``regs`` units of
    ``vec`` elements each cover the row."""
    return (threads(_cdiv(D // vec, regs), MAX_THREADS),)


def ln_backward_launch(R: int, D: int) -> tuple[int, int]:
    """(blocks P, threads T) of the LN backward: at most LN_BWD_BLOCKS blocks walk the R rows."""
    T = threads(_cdiv(D, LN_BWD_REGS), min(LN_BWD_MAX_THREADS, MAX_THREADS))
    return min(R, LN_BWD_BLOCKS), T


def blocks_per_channel(M: int, column_blocks: int) -> int:
    """Split each channel so the grid fills the GPU even for small C, but never into pieces
    smaller than BN_MIN_PER_BLOCK elements."""
    want = _cdiv(BN_TARGET_BLOCKS, max(column_blocks, 1))
    return max(1, min(want, _cdiv(M, BN_MIN_PER_BLOCK), 65535))


def partials_launch(outer: int, C: int, inner: int, N: int) -> tuple[tuple, tuple, int]:
    """(grid, block, P) of the per-block partial sums over each (sample, channel) of ``N`` equal
    samples of the canonical view: P blocks per channel, grid (channel blocks, P, N). Channels-last
    (``inner == 1``) uses (BN_TX, BN_TY) tiles whose lanes run over channels, so loads coalesce."""
    M = outer // N * inner  # values per (sample, channel)
    if inner == 1:
        col_blocks = _cdiv(C, BN_TX)
        P = blocks_per_channel(M, col_blocks * N)
        return (col_blocks, P, N), (BN_TX, BN_TY), P
    P = blocks_per_channel(M, C * N)
    return (C, P, N), (threads(_cdiv(M, P), BN_THREADS),), P


def elementwise_launch(outer: int, C: int, inner: int) -> tuple[tuple, tuple]:
    """(grid, block) of the per-element passes (normalize, grad_x) over the canonical view:
    channels-last tiles over (channels, rows), else grid.x over the (o, c) runs and grid.y over
    the chunks of a run, each thread striding about 4 times."""
    if inner == 1:
        return (_cdiv(C, BN_TX), max(1, min(MAX_GRID_Y, _cdiv(outer, BN_TY * 4)))), (BN_TX, BN_TY)
    T = threads(inner, BN_THREADS)
    return (outer * C, max(1, min(MAX_GRID_Y, _cdiv(inner, T * 4)))), (T,)
