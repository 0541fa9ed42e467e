"""Helpers the whole suite shares, as session fixtures (test modules never import a conftest).

- ``randomize(model, seed=0)``: non-zero random values in every parameter, model in eval mode (a zero
  GRN is an identity and hides bugs, so no test may rely on the default init).
- ``run_tool('tools/x.py', *args, check=True, timeout=600)``: run a tool as a user runs it, in a fresh
  interpreter from the repo root, with this checkout first on ``PYTHONPATH``; output captured. ``check``
  turns a non-zero exit into a failure that shows the output; pass ``check=False`` to test the exit code.
- ``load_tool('x')``: import ``tools/x.py`` as a module, to call its ``main(argv)`` in-process.

Tests marked ``slow`` (whole training runs, the largest archs) run by default; deselect them with
``-m 'not slow'``.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

# Triton reads TRITON_INTERPRET once, when it is first imported (torch or any test module may import it):
# set it before anything does, so the fused block's kernels run interpreted on the CPU in every test.
os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def randomize_parameters(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter with N(0, 0.2^2) values from ``seed``; return the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def run_repo_tool(tool: str | os.PathLike, *args: object, check: bool = True,
                  timeout: float = 600) -> subprocess.CompletedProcess:
    """``python TOOL ARGS`` from the repo root; with ``check``, a non-zero exit fails with the output."""
    env = dict(os.environ, PYTHONWARNINGS='ignore',
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get('PYTHONPATH')) if p))
    proc = subprocess.run([sys.executable, str(tool), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f'{tool} {args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n'
                             f'{proc.stderr[-4000:]}')
    return proc


def import_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module (a fresh copy each call)."""
    spec = importlib.util.spec_from_file_location(f'{name}_tool', REPO / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='session')
def randomize() -> Callable[..., torch.nn.Module]:
    return randomize_parameters


@pytest.fixture(scope='session')
def run_tool() -> Callable[..., subprocess.CompletedProcess]:
    return run_repo_tool


@pytest.fixture(scope='session')
def load_tool() -> Callable[[str], ModuleType]:
    return import_tool
