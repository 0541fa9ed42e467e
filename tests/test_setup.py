"""setup.py's python_requires is honest: every Python file of the repository is valid at that version.

Only Python 3.11 runs here, so the claim is checked statically: each file parses with the grammar of the
declared minimum, and names only added to the standard library after it are not used.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ('convnextv2_dense', 'tools', 'tests', 'configs') for p in (REPO / folder).rglob('*.py')
                 ) + [REPO / 'setup.py']
# Standard-library names new in 3.11 (modules, and attributes of the modules they live in).
NEW_IN_311 = {'tomllib', 'wsgiref.types', 'typing.Self', 'typing.LiteralString', 'typing.Never', 'typing.assert_never',
              'typing.assert_type', 'typing.reveal_type', 'typing.Required', 'typing.NotRequired',
              'typing.TypeVarTuple', 'typing.Unpack', 'enum.StrEnum', 'enum.verify', 'enum.ReprEnum',
              'datetime.UTC', 'asyncio.TaskGroup', 'asyncio.timeout', 'asyncio.Runner', 'hashlib.file_digest',
              'contextlib.chdir', 'operator.call', 'math.cbrt', 'math.exp2', 'builtins.ExceptionGroup',
              'builtins.BaseExceptionGroup'}


def declared_minimum() -> tuple[int, int]:
    found = re.search(r"python_requires='>=(\d+)\.(\d+)'", (REPO / 'setup.py').read_text())
    assert found, 'setup.py declares no python_requires'
    return int(found.group(1)), int(found.group(2))


def test_the_declared_minimum_is_below_what_runs_here():
    assert declared_minimum() == (3, 10)


@pytest.mark.parametrize('path', SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_file_parses_as_the_declared_minimum(path):
    ast.parse(path.read_text(), filename=str(path), feature_version=declared_minimum())


def used_names(tree: ast.AST) -> set[str]:
    """Dotted names a file imports or reads: ``typing.Self``, ``tomllib``, ``builtins.ExceptionGroup``."""
    aliases: dict[str, str] = {}
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.add(alias.name)
                aliases[alias.asname or alias.name.split('.')[0]] = alias.name if alias.asname else alias.name.split('.')[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                names.add(f'{node.module}.{alias.name}')
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            names.add(f'{aliases[node.value.id]}.{node.attr}')
        elif isinstance(node, ast.Name):
            names.add(f'builtins.{node.id}')
    return names


def test_no_file_uses_standard_library_names_newer_than_the_minimum():
    offenders = {str(p.relative_to(REPO)): sorted(used_names(ast.parse(p.read_text())) & NEW_IN_311) for p in SOURCES}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_name_scan_finds_what_it_looks_for():
    tree = ast.parse('import tomllib\nfrom typing import Self\nimport enum as e\nx = e.StrEnum\nraise ExceptionGroup("", [])')
    assert used_names(tree) & NEW_IN_311 == {'tomllib', 'typing.Self', 'enum.StrEnum', 'builtins.ExceptionGroup'}
