"""Compare every leaf config, fully merged, between a git revision and the working tree.

    python dev/config_diff.py REV            # e.g. main, HEAD~3
    python dev/config_diff.py REV --quiet    # only the summary line

For a refactor of the shared bases: it prints each dotted key whose value differs, and the configs that exist
on one side only. The exit status is 0 when nothing differs, 1 otherwise.
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def leaves(root: Path) -> list[str]:
    """The leaf configs under ``root/configs``, as paths relative to ``root``."""
    configs = root / 'configs'
    return sorted(str(p.relative_to(root)) for p in [*configs.glob('*.py'), *(configs / 'demo').glob('*.py')])


def flatten(value: Any, prefix: str = '') -> dict[str, Any]:
    """``{'a': {'b': [1, 2]}}`` -> ``{'a.b[0]': 1, 'a.b[1]': 2}``; tuples and lists compare alike."""
    if isinstance(value, dict):
        items = {}
        for key, sub in value.items():
            items.update(flatten(sub, f'{prefix}.{key}' if prefix else str(key)))
        return items if items else {prefix: {}}
    if isinstance(value, (list, tuple)):
        items = {}
        for i, sub in enumerate(value):
            items.update(flatten(sub, f'{prefix}[{i}]'))
        return items if items else {prefix: []}
    return {prefix: value}


def merged(path: Path, keep_scope: bool = False) -> dict[str, Any]:
    """The dotted keys of the merged config. ``_scope_`` markers equal to the config's ``default_scope`` (which
    mmengine adds to whatever comes from an ``mmdet::`` / ``mmseg::`` base) change nothing and are dropped
    unless ``keep_scope``."""
    from mmengine.config import Config
    cfg = Config.fromfile(str(path)).to_dict()
    items = flatten(cfg)
    if not keep_scope:
        items = {k: v for k, v in items.items()
                 if not (k.rsplit('.', 1)[-1] == '_scope_' and v == cfg.get('default_scope'))}
    return items


def checkout_configs(rev: str, into: Path) -> None:
    """Write the ``configs`` folder of ``rev`` under ``into``."""
    archive = subprocess.run(['git', '-C', str(REPO), 'archive', rev, 'configs'], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter='data')


def diff(rev: str, quiet: bool = False, keep_scope: bool = False) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        old_root = Path(tmp)
        checkout_configs(rev, old_root)
        old, new = set(leaves(old_root)), set(leaves(REPO))
        changed = 0
        for name in sorted(old & new):
            before, after = merged(old_root / name, keep_scope), merged(REPO / name, keep_scope)
            keys = sorted(k for k in before.keys() | after.keys()
                          if before.get(k, '<absent>') != after.get(k, '<absent>'))
            if keys:
                changed += 1
                if not quiet:
                    print(f'{name}:')
                    for key in keys:
                        print(f'    {key}: {before.get(key, "<absent>")!r} -> {after.get(key, "<absent>")!r}')
        if not quiet:
            for name in sorted(old - new):
                print(f'only in {rev}: {name}')
            for name in sorted(new - old):
                print(f'only in the working tree: {name}')
        print(f'{len(old & new)} configs on both sides, {changed} differ; {len(old - new)} only in {rev}, '
              f'{len(new - old)} only in the working tree')
    return 1 if changed or old != new else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('rev', help='git revision to compare the working tree with')
    parser.add_argument('--quiet', action='store_true', help='print only the summary line')
    parser.add_argument('--keep-scope', action='store_true', help='also report `_scope_` markers that equal the '
                        "config's default_scope")
    args = parser.parse_args(argv)
    import convnextv2_dense  # noqa: F401  (registers our classes, as tools/train.py does)
    return diff(args.rev, args.quiet, args.keep_scope)


if __name__ == '__main__':
    sys.exit(main())
