"""pytest-benchmark suite options and fixtures; the grid lives in numbanorm.bench._cases, the peers
in numbanorm.bench._registry.

By default (``--benchmark-disable``, set in pyproject) every case runs once on a small shape and
asserts that the peers agree with a float64 reference: a smoke test. ``--benchmark-enable`` times
the ``quick`` grid; ``--bench-grid full`` the whole one; ``--bench-ops backward,half`` a part.
"""

from __future__ import annotations

import pytest

from numbanorm.bench import _cases, _registry


def pytest_addoption(parser):
    group = parser.getgroup("numbanorm-bench")
    group.addoption("--bench-grid", choices=("smoke", "quick", "full"), default=None,
                    help="cases to run (default: smoke with --benchmark-disable, else quick)")
    group.addoption("--bench-threads", type=int, default=None,
                    help="threads for numbanorm, torch and ONNX Runtime (default: numba's default)")
    group.addoption("--bench-peers", default=None,
                    help="comma-separated peers (default: all, and the roofline copies copy, copy-nt, copy-1t)")
    group.addoption("--bench-ops", default=None,
                    help="comma-separated ops or aliases (forward, backward, half, family; default: all)")


def _grid_name(config) -> str:
    name = config.getoption("--bench-grid")
    if name:
        return name
    return "smoke" if config.getoption("benchmark_disable", default=True) else "quick"


def _threads(config) -> int:
    return config.getoption("--bench-threads") or _cases.default_threads()


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--bench-ops")
        cases = _cases.grid(_grid_name(metafunc.config), tuple(chosen.split(",")) if chosen else None)
        metafunc.parametrize("case", cases, ids=[c.group for c in cases])
    if "peer" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--bench-peers")
        peers = chosen.split(",") if chosen else _registry.PEERS + _registry.COPIES
        metafunc.parametrize("peer", peers)


@pytest.fixture(scope="session")
def threads(request) -> int:
    """The one thread count every peer uses; fixed for the session and reported."""
    return _cases.set_threads(_threads(request.config))


def pytest_report_header(config):
    return f"numbanorm bench: grid={_grid_name(config)} threads={_threads(config)}"


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["numbanorm"] = _cases.machine_info(_threads(config))
