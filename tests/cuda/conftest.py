"""CUDA-simulator tests. They must run in a process where NUMBA_ENABLE_CUDASIM=1 was set before
numba was imported, so ``tests/test_cuda.py`` runs this folder in a subprocess; a plain
``pytest tests`` run (without the variable) does not collect it directly."""

from __future__ import annotations

import os

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    collect_ignore_glob = ["test_*.py"]
else:
    import pytest

    @pytest.fixture(autouse=True)
    def small_blocks(monkeypatch):
        """Tiny blocks so that tiny inputs span several blocks and every code path runs
        (register slots and the re-read tail in LN, several partials per BN channel)."""
        from numbanorm.cuda import _kernels

        for name, value in dict(MIN_THREADS=2, MAX_THREADS=8, LN_REGS=2, BN_THREADS=4, BN_TX=2, BN_TY=2,
                                BN_TARGET_BLOCKS=6, BN_MIN_PER_BLOCK=8).items():
            monkeypatch.setattr(_kernels, name, value)
