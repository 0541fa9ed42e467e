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

import os
import subprocess
from collections.abc import Callable
from types import ModuleType

# Triton reads TRITON_INTERPRET once, when it is first imported (torch or any test module may import it):
# set it before anything does, so the fused block's kernels run interpreted on the CPU in every test.
os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402
import torch  # noqa: E402
from suite_support import import_tool, randomize_parameters, run_repo_tool  # noqa: E402


@pytest.fixture(scope='session')
def randomize() -> Callable[..., torch.nn.Module]:
    return randomize_parameters


@pytest.fixture(scope='session')
def run_tool() -> Callable[..., subprocess.CompletedProcess]:
    return run_repo_tool


@pytest.fixture(scope='session')
def load_tool() -> Callable[[str], ModuleType]:
    return import_tool
