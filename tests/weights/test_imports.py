"""The weights package is part of the pure core: torch, safetensors and the standard library only."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / 'convnextv2_dense' / 'weights'
ALLOWED = {'torch', 'safetensors', 'huggingface_hub', 'h5py'}
LAZY = {'huggingface_hub', 'h5py'}  # only inside a function: optional, for hub ids and tf_model.h5


def top_level_imports(path: Path) -> dict[str, bool]:
    """Absolute imports of a file -> whether each is at module level."""
    tree = ast.parse(path.read_text())
    found: dict[str, bool] = {}
    module_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        for name in names:
            root = name.split('.')[0]
            found[root] = found.get(root, False) or id(node) in module_level
    return found


def test_weights_imports_only_torch_safetensors_and_stdlib():
    for path in PACKAGE.glob('*.py'):
        for name, at_module_level in top_level_imports(path).items():
            assert name in ALLOWED or name in sys.stdlib_module_names or name == '__future__', (path, name)
            assert not name.startswith('mm'), (path, name)
            if name in LAZY:
                assert not at_module_level, f'{path} imports {name} eagerly'


def test_importing_weights_pulls_in_no_hub_or_transformers():
    code = ('import sys, convnextv2_dense.weights; '
            'print(sorted(m for m in sys.modules if m.split(".")[0] in ("huggingface_hub", "transformers", "h5py")))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parents[1]).stdout
    assert out.strip() == '[]'
