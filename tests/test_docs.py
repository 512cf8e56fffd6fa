"""Every Python code block of README.md and docs/*.md runs: the blocks of one file in order, in
one namespace, each building on the ones before it. A block that needs what CI does not have (a
GPU, a cluster) is marked with an HTML comment on the line before it,
``<!-- skip: needs a CUDA GPU -->``, and reported as skipped with that reason, never silently."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_BLOCK = re.compile(r"(?:<!--\s*skip:\s*(?P<skip>.*?)\s*-->\s*\n)?```python\n(?P<code>.*?)```", re.S)


def _blocks():
    for path in FILES:
        for k, m in enumerate(_BLOCK.finditer(path.read_text())):
            line = path.read_text()[: m.start("code")].count("\n") + 1
            yield pytest.param(path, k, m["code"], m["skip"], id=f"{path.relative_to(ROOT)}:{line}")


_NAMESPACES: dict[pathlib.Path, dict] = {}


@pytest.mark.parametrize("path,index,code,skip", list(_blocks()))
def test_code_block_runs(path, index, code, skip, tmp_path, monkeypatch):
    if skip:
        pytest.skip(skip)
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    namespace = _NAMESPACES.setdefault(path, {"__name__": f"docs_{path.stem}"})
    # From a real file: tracebacks show the block, and numba's cache=True finds a source to key on.
    source = tmp_path / f"{path.stem}_block{index}.py"
    source.write_text(code)
    exec(compile(code, str(source), "exec"), namespace)
