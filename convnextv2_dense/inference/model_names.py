"""Model names of the model zoo (``model-index.yml`` and the ``configs/metafile-*.yml`` it imports).

``tools/infer.py upernet_convnextv2_tiny_ade20k best.pth img.jpg`` takes a model name where a config file
is expected, as mm's inferencers do for their own zoo. The names are those of the metafiles' ``Models``
entries (``python dev/model_zoo.py`` writes them from the configs), and each resolves to its ``Config``.
Reads only PyYAML and the checkout's files.
"""
from __future__ import annotations

import difflib
import os.path as osp
from functools import cache
from pathlib import Path

from .sources import InferenceInputError

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_INDEX = REPO_ROOT / 'model-index.yml'


@cache
def model_configs() -> dict[str, Path]:
    """Every model name of the zoo and its config file (absolute), in the metafiles' order; none without a
    ``model-index.yml`` (an installed copy of the package, not a checkout)."""
    import yaml
    if not MODEL_INDEX.is_file():
        return {}
    models: dict[str, Path] = {}
    for metafile in yaml.safe_load(MODEL_INDEX.read_text()).get('Import', []):
        for model in yaml.safe_load((REPO_ROOT / metafile).read_text()).get('Models', []):
            models[model['Name']] = REPO_ROOT / model['Config']
    return models


def resolve_config(config: str) -> str:
    """``config`` itself when it is a file, else the config of the model so named.

    Args:
        config (str): A config file, or a model name of ``model-index.yml``.

    Returns:
        str: A config file.

    Raises:
        InferenceInputError: Neither a file nor a model name; the message names the closest names.
    """
    if osp.isfile(config):
        return config
    models = model_configs()
    if config in models:
        return str(models[config])
    close = difflib.get_close_matches(Path(config).stem, list(models), n=3, cutoff=0.6)
    hint = ('; model names that come close: ' + ', '.join(close) if close
            else '; nor is it a model name (model-index.yml lists them, as does the README\'s table)')
    raise InferenceInputError(f'config file not found: {config!r}{hint}')
