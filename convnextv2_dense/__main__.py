"""``python -m convnextv2_dense COMMAND ...``: the user tools without the ``tools/`` path.

Commands: ``infer`` (``tools/infer.py``) and ``export`` (``tools/export.py``).
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    'infer': ('convnextv2_dense.inference.infer_cli', 'run a trained model on images, folders or videos'),
    'export': ('convnextv2_dense.inference.export_cli', 'export to ONNX / torch.export with a parity check'),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its command's ``main``; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help') or argv[0] not in COMMANDS:
        listing = '\n'.join(f'  {name:<8} {help_}' for name, (_, help_) in COMMANDS.items())
        print(f'usage: python -m convnextv2_dense COMMAND [ARGS ...]\n\ncommands:\n{listing}',
              file=sys.stdout if argv[:1] in (['-h'], ['--help']) else sys.stderr)
        if argv and argv[0] not in ('-h', '--help'):
            print(f'\nerror: unknown command {argv[0]!r}', file=sys.stderr)
        return 0 if argv[:1] in (['-h'], ['--help']) else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:], prog=f'python -m convnextv2_dense {argv[0]}')


if __name__ == '__main__':
    sys.exit(main())
