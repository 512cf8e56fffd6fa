"""The output arena (numbanorm/cpu/arena.py): big allocating outputs come from cached blocks.

What must hold: allocating calls equal the ``out=`` path bit for bit (and the ``out=`` results are
checked against the float64 references); an output (or any view of
it) keeps its block, so a later output never aliases memory still reachable; blocks come back
when the last view dies; the limit and the off switch work; concurrent threads never share a
block.
"""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import threading

import ml_dtypes
import numpy as np
import pytest
from backward_reference import bn_backward_ref, rows_backward_ref
from family_reference import group_norm_ref, rms_norm_ref, ulp_distance
from reference import batch_norm_ref, layer_norm_ref, rel_l2

import numbanorm as nb
from numbanorm.cpu import arena as _arena

BIG = (8, 40, 30, 30)  # 288,000 float32 = 1.15 MB: over the arena threshold, odd sizes


@pytest.fixture(scope="module", autouse=True)
def _young_gc():
    """The objects alive before this module are frozen out of the garbage collector
    (``gc.freeze``), so the collections here (``_free``) scan only what its tests made: ~1 ms
    instead of ~0.5 s with torch, dask and numba loaded."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture
def arena(monkeypatch):
    """An emptied arena with a 64 MiB limit, taking outputs from 1 MiB up (the default threshold
    is 16 MiB: smaller test arrays run faster); the previous limit is restored afterwards."""
    monkeypatch.setattr(_arena, "THRESHOLD", 1 << 20)
    gc.collect()
    old = nb.set_arena_limit(0)
    nb.set_arena_limit(64 << 20)
    yield _arena._ARENA
    nb.set_arena_limit(old)


def _data(rng, shape, dtype=np.float32):
    return (rng.standard_normal(shape) * 3 + 1e4).astype(dtype)


def _ops(rng, x):
    """(name, op, reference) for the ops with an allocated output: ``op(**kwargs)`` calls the op
    (allocating, or with ``out=``), ``reference()`` is its float64 result from tests/*reference.py."""
    C, D = x.shape[1], x.shape[-1]
    w, b = rng.standard_normal(C).astype(x.dtype), rng.standard_normal(C).astype(x.dtype)
    wd, bd = rng.standard_normal(D).astype(np.float32), rng.standard_normal(D).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(x.dtype)
    rm, rv = rng.standard_normal(C).astype(x.dtype), (rng.random(C) + 0.5).astype(x.dtype)
    xl = np.moveaxis(x, 1, -1).copy()  # channels-last storage
    _, mean, invstd = nb.batch_norm(x, None, None, w, b, training=True, return_stats=True)
    _, lmean, lrstd = nb.layer_norm(x, D, wd, bd, return_stats=True)
    return [
        ("layer_norm", lambda **k: nb.layer_norm(x, D, wd, bd, **k), lambda: layer_norm_ref(x, (D,), wd, bd)[0]),
        ("layer_norm 2 dims", lambda **k: nb.layer_norm(x, x.shape[-2:], **k),
         lambda: layer_norm_ref(x, x.shape[-2:])[0]),
        ("bn eval NCHW", lambda **k: nb.batch_norm(x, rm.copy(), rv.copy(), w, b, **k),
         lambda: batch_norm_ref(x, rm, rv, w, b)[0]),
        ("bn eval NHWC", lambda **k: nb.batch_norm(xl, rm.copy(), rv.copy(), w, b, channel_axis=-1, **k),
         lambda: batch_norm_ref(xl, rm, rv, w, b, channel_axis=-1)[0]),
        ("bn train NCHW", lambda **k: nb.batch_norm(x, rm.copy(), rv.copy(), w, b, training=True, **k),
         lambda: batch_norm_ref(x, rm, rv, w, b, training=True)[0]),
        ("bn train NHWC", lambda **k: nb.batch_norm(xl, None, None, w, b, training=True, channel_axis=-1, **k),
         lambda: batch_norm_ref(xl, None, None, w, b, training=True, channel_axis=-1)[0]),
        ("bn strided", lambda **k: nb.batch_norm(x[:, :, ::2], None, None, w, b, training=True, **k),
         lambda: batch_norm_ref(x[:, :, ::2], None, None, w, b, training=True)[0]),
        ("rms_norm", lambda **k: nb.rms_norm(x, D, wd, **k), lambda: rms_norm_ref(x, 1, wd)),
        ("group_norm", lambda **k: nb.group_norm(x, 4, w, b, **k), lambda: group_norm_ref(x, 4, w, b)[0]),
        ("bn backward", lambda **k: nb.batch_norm_backward(g, x, mean, invstd, w, True, **k)[0],
         lambda: bn_backward_ref(g, x, w, 1, mean, invstd)[0]),
        ("ln backward", lambda **k: nb.layer_norm_backward(g, x, D, lmean, lrstd, wd, **k)[0],
         lambda: rows_backward_ref(g, x, wd, 1, lmean, lrstd)[0]),
    ]


def test_allocating_equals_out_bit_for_bit(rng, arena):
    """The arena's contract: an allocating call gives the bits of the same call with ``out=``
    (the one kernel writes either buffer), on a fresh block and on recycled ones; and the
    ``out=`` result is the float64 reference."""
    x = _data(rng, BIG)
    for name, op, reference in _ops(rng, x):
        first = op()
        first_copy = first.copy()
        assert first.base is not None or first.nbytes < _arena.THRESHOLD, name  # from the arena
        expected = op(out=np.full(first.shape, np.nan, x.dtype))
        assert rel_l2(expected, reference()) <= 1e-5, name
        again = op()  # the second call of a shape runs on a recycled block
        del first
        third = op()  # and this one on first's block, which held the previous result
        for y in (first_copy, again, third):
            assert y.shape == expected.shape and y.dtype == x.dtype, name
            np.testing.assert_array_equal(y, expected, err_msg=name)
    assert arena.hits > 0


def _within_one_ulp(y, ref64):
    if y.dtype.itemsize == 2:
        assert ulp_distance(y, ref64.astype(y.dtype)).max() <= 1
    else:
        assert rel_l2(y, ref64) <= 1e-10


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float64])
def test_allocating_equals_out_other_dtypes(rng, arena, dtype):
    """As above for the 16-bit and float64 outputs (bit patterns compared as bytes)."""
    offset = 1e4 if np.dtype(dtype).itemsize > 2 else 8.0  # a 1e4 offset leaves halves no digits
    x = (rng.standard_normal((600, 1100)) * 3 + offset).astype(dtype)  # 1.3 MB in 16 bits
    expected = nb.layer_norm(x, 1100, out=np.full(x.shape, np.nan, x.dtype))
    _within_one_ulp(expected, layer_norm_ref(x, (1100,))[0])
    for _ in range(3):
        y = nb.layer_norm(x, 1100)
        assert y.dtype == x.dtype and y.base is not None
        np.testing.assert_array_equal(y.view(np.uint8), expected.view(np.uint8))
    x3 = x.reshape(6, 100, 1100)
    z = nb.batch_norm(x3, None, None, training=True)
    ref = nb.batch_norm(x3, None, None, training=True, out=np.full(z.shape, np.nan, z.dtype))
    _within_one_ulp(ref, batch_norm_ref(x3, training=True)[0])
    np.testing.assert_array_equal(z.view(np.uint8), ref.view(np.uint8))


def test_returned_arrays_behave_like_np_empty(arena):
    y = _arena.empty((3, 1000, 100), np.dtype(np.float32))
    assert y.flags.c_contiguous and y.flags.writeable and y.flags.aligned
    assert y.ctypes.data % 64 == 0
    assert y.shape == (3, 1000, 100) and y.dtype == np.float32
    y[...] = np.arange(y.size, dtype=np.float32).reshape(y.shape)
    z = pickle.loads(pickle.dumps(y))
    assert z.flags.writeable
    np.testing.assert_array_equal(z, y)
    assert np.asarray(y) is y
    h = _arena.empty((1100, 1000), np.dtype(ml_dtypes.bfloat16))
    assert h.dtype == ml_dtypes.bfloat16 and h.shape == (1100, 1000) and h.flags.c_contiguous
    small = _arena.empty((10, 10), np.dtype(np.float32))
    assert small.base is None  # under the threshold: plain np.empty


def _free(arena):
    gc.collect()
    return arena.info()["free_bytes"]


def test_views_keep_their_block_alive_and_unaliased(rng, arena):
    x = _data(rng, (300, 1024))
    D = x.shape[-1]
    expected = nb.layer_norm(x, D)
    keepers = {
        "slice": lambda y: y[7:250:3],
        "reshape": lambda y: y.reshape(-1),
        "asarray": np.asarray,
        "transpose view": lambda y: y.T[::2],
        "memoryview": memoryview,
        "view dtype": lambda y: y.view(np.uint32)[1:],
    }
    assert rel_l2(expected, layer_norm_ref(x, (D,))[0]) <= 1e-5
    for name, keep in keepers.items():
        y = nb.layer_norm(x, D)
        kept = keep(y)
        snapshot = np.array(kept, copy=True)
        del y
        free_before = _free(arena)
        others = [nb.layer_norm(x * 0 - 1.0, D) for _ in range(3)]  # would take a freed block
        for o in others:
            assert not np.shares_memory(np.asarray(kept), o), name
        np.testing.assert_array_equal(np.asarray(kept), snapshot, err_msg=name)
        assert _free(arena) <= free_before  # kept's block was not on the free list
        del kept, others, snapshot
    np.testing.assert_array_equal(nb.layer_norm(x, D), expected)


def test_block_returns_only_after_last_view_dies(arena):
    y = _arena.empty((512, 1024), np.dtype(np.float32))  # 2 MiB
    v = y[100:]
    w = v.reshape(-1)[5:]
    assert _free(arena) == 0
    del y
    assert _free(arena) == 0
    del v
    assert _free(arena) == 0
    del w
    assert _free(arena) == 2 << 20
    z = _arena.empty((512, 1024), np.dtype(np.float32))  # reused (same size class)
    assert arena.info()["free_bytes"] == 0 and arena.info()["hits"] >= 1
    del z


def test_cycles_return_their_block_on_collection(arena):
    y = _arena.empty((512, 1024), np.dtype(np.float32))
    cycle = [y]
    cycle.append(cycle)
    del y, cycle
    assert _free(arena) == 2 << 20


def test_limit_and_disable(rng, arena):
    dt = np.dtype(np.float32)
    arrays = [_arena.empty((1024, 1024), dt) for _ in range(5)]  # 4 MiB each
    nb.set_arena_limit(10 << 20)
    del arrays
    info = arena.info()
    assert info["free_bytes"] <= 10 << 20 and info["free_blocks"] == 2
    assert nb.set_arena_limit(3 << 20) == 10 << 20  # returns the old limit and trims now
    assert arena.info()["free_bytes"] == 0
    nb.set_arena_limit(0)  # off: plain np.empty, nothing cached
    x = _data(rng, (300, 1024))
    y = nb.layer_norm(x, 1024)
    assert y.base is None and y.flags.owndata
    del y
    assert _free(arena) == 0
    for bad in (-1, 1.5, "1G", True, None):
        with pytest.raises(ValueError, match="nbytes"):
            nb.set_arena_limit(bad)
    assert arena.info()["limit"] == 0


def test_environment_variable(monkeypatch):
    for text, expected in (("0", 0), ("268435456", 1 << 28), ("512M", 512 << 20), ("2g", 2 << 30),
                           ("1.5G", 3 << 29), ("64KB", 64 << 10)):
        monkeypatch.setenv("NUMBANORM_ARENA_BYTES", text)
        assert _arena._initial_limit() == expected, text
    monkeypatch.setenv("NUMBANORM_ARENA_BYTES", "")
    assert _arena._initial_limit() == _arena._default_limit() > 0
    for bad in ("lots", "-1", "M", "nan", "inf"):
        monkeypatch.setenv("NUMBANORM_ARENA_BYTES", bad)
        with pytest.raises(ValueError, match="NUMBANORM_ARENA_BYTES"):
            _arena._initial_limit()


def test_finalizer_inside_critical_section_is_deferred(arena):
    """A lease that dies while the arena's lock is held by the same thread (a garbage collection
    triggered in there) must not deadlock nor corrupt the free list: it is queued, then merged."""
    y = _arena.empty((512, 1024), np.dtype(np.float32))
    with arena._lock:
        arena._busy = True
        del y
        assert len(arena._pending) == 1 and arena.info()["free_bytes"] == 0
        arena._busy = False
    z = _arena.empty((600, 1024), np.dtype(np.float32))  # any take drains the pending list
    assert arena.info()["free_bytes"] == 2 << 20 and not arena._pending
    del z


def test_threads_never_share_a_block(arena):
    dt = np.dtype(np.float32)
    errors = []
    start = threading.Barrier(4)

    def work(tid):
        start.wait()
        live = []
        for i in range(40):
            a = _arena.empty((300 + 7 * (i % 3), 1024), dt)
            a.fill(tid)
            live.append(a)
            if len(live) > 2:
                old = live.pop(0)
                if not (old == tid).all():
                    errors.append((tid, i))
        for a in live:
            if not (a == tid).all():
                errors.append((tid, "end"))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, inside the arena too
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors
    assert arena.info()["hits"] > 0


def test_threads_running_ops(rng, arena):
    from concurrent.futures import ThreadPoolExecutor

    xs = [_data(rng, (300, 1024)) for _ in range(4)]
    expected = [nb.layer_norm(x, 1024, out=np.full_like(x, np.nan)) for x in xs]
    for x, y in zip(xs, expected, strict=True):
        assert rel_l2(y, layer_norm_ref(x, (1024,))[0]) <= 1e-5

    def work(i):
        ys = [nb.layer_norm(xs[i], 1024) for _ in range(6)]
        return all(np.array_equal(y, expected[i]) for y in ys)

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(4)))


def test_default_threshold(rng):
    """Outputs from 16 MiB come from the arena (when it is on); smaller ones from np.empty."""
    if nb.arena_info()["limit"] == 0:
        pytest.skip("arena disabled by NUMBANORM_ARENA_BYTES")
    x = rng.standard_normal((4100, 1024)).astype(np.float32)  # 16.8 MB
    big = nb.layer_norm(x, 1024)
    assert isinstance(big.base, _arena._Lease)
    np.testing.assert_array_equal(big, nb.layer_norm(x, 1024, out=np.full_like(x, np.nan)))
    rows = np.r_[0:3, 3:4100:97, 4097:4100]  # the reference on a sample of rows (each is independent)
    assert rel_l2(big[rows], layer_norm_ref(x[rows], (1024,))[0]) <= 1e-5
    assert nb.layer_norm(x[:1000], 1024).base is None


_FREED_OUTPUTS = """
import os
import numpy as np
import numbanorm as nb

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmRSS"))

rng = np.random.default_rng(0)
x = rng.standard_normal((56 << 20) // 4).astype(np.float32)  # one input, sliced below
nb.layer_norm(x[: 1 << 20].reshape(-1, 256), 256)  # compile outside the measurement
before = rss()
outputs = [nb.layer_norm(x[: n].reshape(-1, 256), 256) for n in
           [((32 + 2 * i) << 20) // 4 for i in range(12)]]  # 32..54 MiB each
del outputs
info = nb.arena_info()
print(info["limit"], info["free_bytes"], rss() - before)
"""


@pytest.mark.slow  # a fresh process
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from /proc")
def test_default_limit_bounds_memory_after_outputs_die():
    """Twelve 32-54 MiB outputs, all deleted: the process keeps at most the default 256 MiB."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBANORM_ARENA_BYTES"}
    proc = subprocess.run([sys.executable, "-c", _FREED_OUTPUTS], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    limit, free_bytes, grown = map(int, proc.stdout.split())
    assert limit <= 256 << 20
    assert free_bytes <= limit
    assert grown <= limit + (32 << 20), f"the process grew by {grown >> 20} MiB after its outputs died"
