"""What the root conftest's fixtures call, as a module with a name of its own, so that a helper module
(tests/e2e/helpers.py) can import it too: ``import conftest`` is not safe, since each conftest.py in a folder
without ``__init__.py`` is imported under the name ``conftest`` and the last one collected wins."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import torch

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


def import_tool(name: str, folder: str = 'tools') -> ModuleType:
    """``<folder>/<name>.py`` (a user tool, or with ``folder='dev'`` a maintainer probe) as a module (a fresh copy
    each call)."""
    spec = importlib.util.spec_from_file_location(f'{name}_tool', REPO / folder / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_in_scope(registry, cfg: dict, scope: str = 'mmdet', **kwargs):
    """``registry.build(cfg, **kwargs)`` in an mm package's default scope, only for this call (whatever scope an
    earlier test left current stays current)."""
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope(scope):
        return registry.build(cfg, **kwargs)
