"""Reading checkpoint files safely: local files, HF transformers folders, URLs and HF hub repo ids.

Three readers are used: safetensors, ``torch.load(weights_only=True)``, and h5py for the Keras 2 HDF5
files of HF's TensorFlow models (:mod:`.keras_h5`). Training checkpoints often
hold Python objects besides the weights (argparse namespaces, mmengine history buffers, numpy scalars);
those are replaced by inert placeholders while unpickling, so nothing named in a file is ever imported or
run. Everything here imports only torch, safetensors and the standard library; ``huggingface_hub`` is
imported when a hub repo id is given, ``h5py`` when an HDF5 file is read.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors

from ..compat import load_replacing_objects

CACHE_ENV = 'CONVNEXTV2_CACHE'
META_KEY = 'convnextv2_dense'  # the safetensors metadata entry and the ``meta['format']`` of our files
WRAPPERS = ('state_dict', 'model', 'module')
HF_WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
                   'pytorch_model.bin.index.json', 'tf_model.h5', 'tf_model.h5.index.json')  # PyTorch first
CHECKPOINT_SUFFIXES = ('.pth', '.pt', '.bin', '.safetensors', '.ckpt', '.tar', '.h5')
_REPO_ID = re.compile(r'[A-Za-z0-9][\w.-]*/[\w.-]+')


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, recognised or loaded; the message names the file."""


@dataclass
class RawCheckpoint:
    """The tensors of a checkpoint, before any key conversion.

    Args:
        state_dict (dict[str, torch.Tensor]): Tensors by their key in the file, wrappers removed.
        source (str): What the user gave (path, URL or repo id).
        files (tuple[Path, ...]): The local files that were read.
        meta (dict): Our ``meta`` dict, if the file is one of ours. Defaults to empty.
        hf_config (dict, optional): ``config.json`` of an HF transformers folder. Defaults to None.
    """

    state_dict: dict[str, torch.Tensor]
    source: str
    files: tuple[Path, ...]
    meta: dict = field(default_factory=dict)
    hf_config: dict | None = None


def cache_dir() -> Path:
    """``$CONVNEXTV2_CACHE``, or ``~/.cache/convnextv2_dense``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / '.cache' / 'convnextv2_dense')


def read_checkpoint(source: str | os.PathLike) -> RawCheckpoint:
    """Resolve ``source`` to local files and read their tensors.

    Args:
        source (str | PathLike): A checkpoint file (``.safetensors``, anything ``torch.save`` wrote, or
            an HF TensorFlow ``tf_model.h5``), an HF transformers folder (``config.json`` and
            ``model.safetensors``, ``pytorch_model.bin`` or ``tf_model.h5``, possibly sharded), an http(s)
            URL (downloaded once into :func:`cache_dir`), or an HF hub repo id such as
            ``facebook/convnextv2-tiny-1k-224``.

    Returns:
        RawCheckpoint: The unwrapped tensors and where they came from.

    Raises:
        FileNotFoundError: A path that does not exist.
        CheckpointError: A file that is truncated, corrupt or not a checkpoint, or a source that
            cannot be fetched; the message names it.
    """
    text = os.fspath(source)
    path = Path(text).expanduser()
    if text.startswith(('http://', 'https://')):
        path = download(text)
    elif not path.exists():
        if _REPO_ID.fullmatch(text) and not text.endswith(CHECKPOINT_SUFFIXES):
            path = _fetch_from_hub(text)
        else:
            raise FileNotFoundError(f'checkpoint {text!r} does not exist (give a file, an HF transformers '
                                    'folder, an http(s) URL or an HF hub repo id)')
    if path.is_dir():
        return _read_hf_folder(path, text)
    state_dict, meta = _read_file(path)
    return RawCheckpoint(state_dict, text, (path,), meta)


def _read_hf_folder(folder: Path, source: str) -> RawCheckpoint:
    present = [name for name in HF_WEIGHT_FILES if (folder / name).is_file()]
    if not present:
        raise CheckpointError(f'folder {folder} holds none of {", ".join(HF_WEIGHT_FILES)}; give an HF '
                              'transformers folder (save_pretrained) or a checkpoint file')
    config = None
    if (folder / 'config.json').is_file():
        try:
            config = json.loads((folder / 'config.json').read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f'{folder / "config.json"} is not valid JSON: {err}') from err
    name = present[0]
    if name.endswith('.index.json'):
        files = _shards(folder / name)
    else:
        files = (folder / name,)
    state_dict: dict[str, torch.Tensor] = {}
    for file in files:
        state_dict.update(_read_file(file)[0])
    return RawCheckpoint(state_dict, source, files, {}, config)


def _shards(index: Path) -> tuple[Path, ...]:
    try:
        weight_map = json.loads(index.read_text())['weight_map']
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f'{index} is not a valid shard index (a JSON object with "weight_map"): '
                              f'{err}') from err
    files = tuple(index.parent / name for name in dict.fromkeys(weight_map.values()))
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f'{index} names shards that are missing: {", ".join(missing)}')
    return files


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read one file; return its unwrapped state dict and our meta dict (if any)."""
    if not path.is_file():
        raise CheckpointError(f'{path} is not a file')
    with open(path, 'rb') as f:
        head = f.read(9)
    if len(head) < 9:
        raise CheckpointError(f'{path} is empty or truncated ({len(head)} bytes); not a checkpoint')
    if head[8:9] == b'{' or path.suffix == '.safetensors':
        return _read_safetensors(path)
    if head.startswith(b'\x89HDF'):  # Keras 2 / HF TensorFlow weights
        from .keras_h5 import read_keras_h5
        return read_keras_h5(path), {}
    if not (head.startswith(b'PK') or head[0] == 0x80):  # torch.save's zip, or a legacy pickle
        raise CheckpointError(f'{path} is not a checkpoint: it starts with {head!r}, which is neither '
                              'safetensors, a file written by torch.save, nor HDF5')
    return _unwrap(_torch_load(path), path)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework='pt') as f:
            metadata = f.metadata() or {}
        state_dict = load_safetensors(str(path), device='cpu')
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f'{path} is not a readable safetensors file (truncated or corrupt?): '
                              f'{err}') from err
    meta: dict = {}
    if META_KEY in metadata:
        try:
            meta = json.loads(metadata[META_KEY])
        except ValueError as err:
            raise CheckpointError(f'{path}: the {META_KEY!r} metadata entry is not JSON: {err}') from err
    return state_dict, meta


class _Inert:
    """Stands in for any non-tensor object in a pickle; it accepts any state and does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return '<object replaced while reading the checkpoint>'


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, with every global the safe unpickler refuses made inert."""
    try:
        return load_replacing_objects(str(path), _Inert)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        boilerplate = ('Weights only load failed', 'Please file an issue', 'Check the documentation', '(1)',
                       '(2)', 'WeightsUnpickler error')
        lines = [line.strip() for line in str(err).splitlines()
                 if line.strip() and not line.strip().startswith(boilerplate)]
        reason = next((line for line in lines if 'GLOBAL' in line), lines[0] if lines else '')
        raise CheckpointError(f'{path} is not a readable PyTorch checkpoint (truncated, corrupt, or not '
                              f'a checkpoint at all): {type(err).__name__}{": " * bool(reason)}{reason}') from err


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Peel ``state_dict`` / ``model`` / ``module`` wrappers and a DDP ``module.`` key prefix."""
    meta: dict = {}
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if isinstance(obj.get('meta'), Mapping) and obj['meta'].get('format') == META_KEY:
            meta = dict(obj['meta'])
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f'{path} holds no state dict (found {type(obj).__name__}; looked under '
                              f'{", ".join(map(repr, WRAPPERS))})')
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f'{path}: the state dict has entries that are not tensors: {abbreviate(bad)}')
    state_dict = {str(k): v for k, v in obj.items()}
    if all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    return state_dict, meta


def download(url: str, directory: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Download ``url`` once into the cache and return the local file.

    The file is written to a temporary name in the cache and renamed when complete, so an interrupted
    download never leaves a truncated checkpoint behind.

    Args:
        url (str): An http(s) URL.
        directory (str | PathLike, optional): Where to keep it. Defaults to None, meaning
            :func:`cache_dir`.
        progress (bool): Report progress on stderr. Defaults to True.

    Returns:
        Path: ``<cache>/<first 8 hex of sha256(url)>_<file name>``.
    """
    folder = Path(directory) if directory is not None else cache_dir()
    name = Path(urllib.parse.urlparse(url).path).name or 'checkpoint'
    target = folder / f'{hashlib.sha256(url.encode()).hexdigest()[:8]}_{name}'
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{name}.', suffix='.part')
    try:
        with os.fdopen(fd, 'wb') as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get('Content-Length') or 0)
            done, shown = 0, -1
            if progress:
                print(f'Downloading {url} to {target}', file=sys.stderr)
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if progress and total and done * 10 // total != shown:
                    shown = done * 10 // total
                    print(f'\r  {done / 2**20:.1f} / {total / 2**20:.1f} MiB', end='', file=sys.stderr)
            if progress and total:
                print(file=sys.stderr)
        if total and done != total:
            raise CheckpointError(f'download of {url} stopped at {done} of {total} bytes')
        os.replace(tmp, target)
    except CheckpointError:
        raise
    except OSError as err:
        raise CheckpointError(f'could not download {url}: {err}') from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def _fetch_from_hub(repo_id: str) -> Path:
    """Download ``config.json`` and the weights of an HF hub repo; return the snapshot folder."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError as err:
        raise CheckpointError(f'{repo_id!r} is not a local path; to read it as an HF hub repo id, install '
                              'huggingface_hub (pip install huggingface_hub)') from err
    try:
        config = Path(hf_hub_download(repo_id, 'config.json'))
        for name in HF_WEIGHT_FILES:
            try:
                weights = Path(hf_hub_download(repo_id, name))
            except LocalEntryNotFoundError:
                raise
            except EntryNotFoundError:
                continue
            if name.endswith('.index.json'):
                shard_names = dict.fromkeys(json.loads(weights.read_text())['weight_map'].values())
                for shard in shard_names:
                    hf_hub_download(repo_id, shard)
            return config.parent
    except LocalEntryNotFoundError as err:
        raise CheckpointError(f'{repo_id!r} is not a local path, and as an HF hub repo id it cannot be '
                              'fetched: it is not in the local HF cache and the hub cannot be reached '
                              '(offline, or HF_HUB_OFFLINE=1). Download it while online, or give a local '
                              'path') from err
    except Exception as err:  # noqa: BLE001 - hub errors come in many types
        raise CheckpointError(f'{repo_id!r} is not a local path, and as an HF hub repo id it cannot be '
                              f'fetched: {type(err).__name__}: {err}') from err
    raise CheckpointError(f'HF hub repo {repo_id!r} has none of {", ".join(HF_WEIGHT_FILES)}')


def abbreviate(keys: list[str] | tuple[str, ...], limit: int = 8) -> str:
    """``'a, b, c'`` or ``'a, b, ... (12 in all)'`` for messages."""
    keys = list(keys)
    shown = ', '.join(keys[:limit])
    return shown if len(keys) <= limit else f'{shown}, ... ({len(keys)} in all)'
