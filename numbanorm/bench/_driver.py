"""The driver of ``python -m numbanorm.bench``: one worker process per library, samples alternated.

For each case the driver computes the float64 reference once (written to a temporary folder the
workers memory-map), has every worker build and check its peers, then asks for one sample of each
peer in turn, round after round (the starting peer rotating), until every peer has its budget.
Load from other processes therefore hits every library alike, and no library's threads ever
run while another is timed (each worker waits for its own pool to go idle before answering).

The isolation ledger (:class:`Ledger`) turns the workers' reports into evidence: for each sample,
the CPU (in cores) that the *other* workers burned while it ran.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from . import _cases, _registry, _worker

#: Samples per peer and case: at least, and at most (the budget decides in between).
MIN_REPEATS = 5
MAX_REPEATS = 60
#: A sample lasts at least this long (fast calls are looped), and about budget / TARGET_SAMPLES.
MIN_SAMPLE_S = 1e-3
TARGET_SAMPLES = 10


#: The machine counts as quiet when runnable threads waited for a CPU (pressure stall) less than
#: this share of a QUIET_WINDOW_S window; the driver waits for that before each case.
QUIET_STALL = 0.05
QUIET_WINDOW_S = 0.5


def wait_quiet(max_s: float) -> float:
    """Wait (at most ``max_s``) until no runnable thread of the machine waits for a CPU more than
    :data:`QUIET_STALL` of a window, so that a case does not start inside another process's burst
    of work (on the 2-core machine: another agent's test run). Seconds waited; 0 without PSI."""
    t0 = time.perf_counter()
    s_prev = _worker.cpu_stall_s()
    if s_prev is None or max_s <= 0:
        return 0.0
    while time.perf_counter() - t0 < max_s:
        time.sleep(QUIET_WINDOW_S)
        s = _worker.cpu_stall_s()
        if s - s_prev < QUIET_STALL * QUIET_WINDOW_S:
            break
        s_prev = s
    return time.perf_counter() - t0


class WorkerDied(RuntimeError):
    pass


class Worker:
    """One library's process and its pipe."""

    def __init__(self, library: str, threads: int, quiesce: bool = True):
        ctx = multiprocessing.get_context("spawn")  # fork would copy the driver's thread pools
        self.library = library
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker.main, args=(child, library, threads, quiesce), daemon=True,
                                name=f"numbanorm-bench-{library}")
        self.proc.start()
        child.close()
        self.send(("hello",))
        self._info: dict | None = None

    @property
    def info(self) -> dict:
        """What the worker said about its library (pid, threads, ``broken``: why it cannot run)."""
        if self._info is None:
            self._info = self.recv()
        return self._info

    def send(self, msg: tuple) -> None:
        self.conn.send(msg)

    def recv(self) -> dict:
        try:
            return self.conn.recv()
        except (EOFError, OSError) as exc:
            raise WorkerDied(f"the {self.library} worker died (exit code {self.proc.exitcode})") from exc

    def call(self, msg: tuple) -> dict:
        self.send(msg)
        return self.recv()

    def close(self) -> None:
        try:
            if self.proc.is_alive():
                self.call(("exit",))
        except (WorkerDied, OSError, BrokenPipeError):
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


class Pool:
    """The workers of a run, started lazily, restarted when one dies."""

    def __init__(self, threads: int, quiesce: bool = True):
        self.threads, self.quiesce = threads, quiesce
        self.workers: dict[str, Worker] = {}

    def get(self, library: str) -> Worker:
        w = self.workers.get(library)
        if w is None or not w.proc.is_alive():
            w = self.workers[library] = Worker(library, self.threads, self.quiesce)
        w.info  # noqa: B018 - the hello answer comes first
        return w

    def start(self, libraries: Iterable[str]) -> dict[str, dict]:
        """Start the workers of ``libraries`` at once; what each said about itself."""
        for lib in libraries:
            if lib not in self.workers:
                self.workers[lib] = Worker(lib, self.threads, self.quiesce)
        out = {}
        for lib in libraries:
            try:
                out[lib] = self.workers[lib].info
            except WorkerDied as exc:
                out[lib] = {"broken": str(exc)}
        return out

    def close(self) -> None:
        for w in self.workers.values():
            w.close()
        self.workers.clear()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Ledger:
    """Per sample, the cores other workers used while it ran (from their ``idle_cpu_s``); per
    worker, its idle CPU and wall time over the run."""

    def __init__(self):
        self.others: list[float] = []  # sample index -> cores used by other workers meanwhile
        self.pending: dict[str, list[int]] = {}
        self.idle: dict[str, list[float]] = {}  # library -> [idle cpu s, idle wall s]

    def reply(self, library: str, rep: dict) -> None:
        """Account a worker's reply: its idle CPU since its previous reply lands on the samples
        of the other workers that ran in between."""
        cpu, wall = rep.get("idle_cpu_s", 0.0), rep.get("idle_wall_s", 0.0)
        tot = self.idle.setdefault(library, [0.0, 0.0])
        tot[0] += cpu
        tot[1] += wall
        rate = cpu / wall if wall > 0 else 0.0
        for k in self.pending.pop(library, []):
            self.others[k] += rate

    def sample(self, library: str, libraries: Iterable[str]) -> int:
        """A new sample of ``library``; returns its index."""
        k = len(self.others)
        self.others.append(0.0)
        for lib in libraries:
            if lib != library:
                self.pending.setdefault(lib, []).append(k)
        return k

    def summary(self) -> dict[str, dict[str, float]]:
        return {lib: {"idle_cpu_s": c, "idle_wall_s": w, "idle_cores": c / w if w > 0 else 0.0}
                for lib, (c, w) in self.idle.items()}


def _write_ref(case: _cases.Case, folder: str) -> bool:
    """Float64 reference of ``case`` into ``folder`` (False: the dtype is missing here)."""
    try:
        data = _cases.make_data(case)
    except _cases.Unsupported:
        return False
    ref = _cases.reference(case, data)
    for k, r in enumerate(ref if isinstance(ref, tuple) else (ref,)):
        np.save(os.path.join(folder, f"ref_{k}.npy"), np.ascontiguousarray(r))
    return True


def _ref_folder() -> str:
    shm = "/dev/shm"
    return tempfile.mkdtemp(prefix="numbanorm-bench-", dir=shm if os.path.isdir(shm) else None)


def _setup(pool: Pool, case: _cases.Case, peers: list[str], folder: str, sample_s: float,
           ledger: Ledger) -> tuple[dict[str, dict], dict[str, Worker], list[Worker], dict[str, Any]]:
    """Every worker builds its peers at once (untimed), then each peer is calibrated alone.
    (entries, worker of each ready peer, the workers that hold the case, info)."""
    by_lib: dict[str, list[str]] = {}
    for p in peers:
        by_lib.setdefault(_registry.LIBRARY[p], []).append(p)
    entries: dict[str, dict] = {}
    ready: dict[str, Worker] = {}
    info: dict[str, Any] = {}
    started = []
    for lib, ps in by_lib.items():
        try:
            w = pool.get(lib)
            w.send(("setup", case, ps, folder))
            started.append((w, ps))
        except (WorkerDied, OSError) as exc:
            entries.update({p: {"error": str(exc)} for p in ps})
    holding = []
    for w, ps in started:
        try:
            rep = w.recv()
        except WorkerDied as exc:
            entries.update({p: {"error": str(exc)} for p in ps})
            continue
        holding.append(w)
        ledger.reply(w.library, rep)
        if rep.get("threading_layer"):
            info["threading_layer"] = rep["threading_layer"]
        for p in ps:
            e = rep.get("entries", {}).get(p) or {"error": rep.get("error", "no answer")}
            entries[p] = e
            if "rel_l2_error" in e:
                ready[p] = w
    for p, w in list(ready.items()):
        try:
            rep = w.call(("calibrate", p, sample_s))
        except WorkerDied as exc:
            rep = {"error": str(exc)}
        ledger.reply(w.library, rep)
        if "error" in rep:
            entries[p]["error"] = rep["error"]
            del ready[p]
        else:
            entries[p]["inner_loops"] = rep["inner_loops"]
    return entries, ready, holding, info


def _alternate(ready: dict[str, Worker], holding: list[Worker], budget_s: float, ledger: Ledger,
               on_sample: Callable[[str], None] | None = None) -> dict[str, list[dict]]:
    """Samples of every ready peer, one of each in turn per round (the first one rotating), until
    each has :data:`MIN_REPEATS` samples and its budget. ``holding``: every worker that holds the
    case (the ledger watches them all)."""
    samples: dict[str, list[dict]] = {p: [] for p in ready}
    spent = dict.fromkeys(ready, 0.0)
    libraries = {w.library for w in holding}
    alive = dict(ready)
    rnd = 0

    def wanted(p: str) -> bool:
        n = len(samples[p])
        return n < MIN_REPEATS or (spent[p] < budget_s and n < MAX_REPEATS)

    while True:
        todo = [p for p in alive if wanted(p)]
        if not todo:
            return samples
        k = rnd % len(todo)
        for p in todo[k:] + todo[:k]:
            w = alive[p]
            if on_sample:
                on_sample(p)
            idx = ledger.sample(w.library, libraries)
            try:
                rep = w.call(("sample", p))
            except WorkerDied as exc:
                samples[p].append({"error": str(exc)})
                del alive[p]
                continue
            ledger.reply(w.library, rep)
            if "error" in rep:
                samples[p].append({"error": rep["error"]})
                del alive[p]
                continue
            samples[p].append(rep | {"ledger": idx})
            spent[p] += rep["wall"]
        rnd += 1


def stats(samples: list[dict], ledger: Ledger) -> dict[str, Any]:
    """Median, min, max of a peer's samples, and what the workers and the ledger say about them:
    ``cores_used`` (process CPU / wall while sampled), ``others_cores`` (CPU of the *other*
    workers meanwhile, in cores: the isolation evidence), ``preempted_share`` (samples during
    which a thread of the peer was preempted, by another process on a busy machine),
    ``stall_share`` (time some runnable thread of the machine waited for a CPU)."""
    ok = [s for s in samples if "t" in s]
    if not ok:
        return {"error": next((s["error"] for s in samples if "error" in s), "no samples")}
    ts = sorted(s["t"] for s in ok)
    n = len(ts)
    median = ts[n // 2] if n % 2 else 0.5 * (ts[n // 2 - 1] + ts[n // 2])
    wall = sum(s["wall"] for s in ok)
    others = sum(ledger.others[s["ledger"]] * s["wall"] for s in ok) / wall if wall > 0 else 0.0
    out = {"median_s": median, "min_s": ts[0], "max_s": ts[-1], "repeats": n,
           "preempted_share": sum(1 for s in ok if s.get("preempted", 0) > 0) / n,
           "stall_share": sum(s.get("stall", 0.0) for s in ok) / wall if wall > 0 else 0.0,
           "cores_used": sum(s["cpu"] for s in ok) / wall if wall > 0 else None,
           "others_cores": others,
           "quiesce_s": sum(s.get("quiesce_s", 0.0) for s in ok) / len(ok),
           "not_quiet": sum(1 for s in ok if s.get("quiet") is False)}
    if len(ok) < len(samples):
        out["error"] = next(s["error"] for s in samples if "error" in s)
    return out


def measure_case(pool: Pool, case: _cases.Case, peers: list[str], budget_s: float, ledger: Ledger,
                 on_sample: Callable[[str], None] | None = None) -> tuple[dict[str, dict], dict[str, Any]]:
    """{peer: entry} for ``case`` (timed entries carry :func:`stats`), and what the workers said."""
    folder = _ref_folder()
    try:
        if not _write_ref(case, folder):
            why = f"{case.spec.dtype} needs ml_dtypes, which is not installed"
            return {p: {"skipped": why} for p in peers}, {}
        sample_s = max(MIN_SAMPLE_S, budget_s / TARGET_SAMPLES)
        entries, ready, holding, info = _setup(pool, case, peers, folder, sample_s, ledger)
        timed = _alternate(ready, holding, budget_s, ledger, on_sample)
        for w in holding:
            try:
                ledger.reply(w.library, w.call(("drop",)))
            except WorkerDied:
                pass
        for p, ss in timed.items():
            entries[p].update(stats(ss, ledger))
        return entries, info
    finally:
        shutil.rmtree(folder, ignore_errors=True)
