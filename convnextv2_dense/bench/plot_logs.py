"""Plot mmengine's json scalar logs: training losses and validation metrics, one picture each.

mmengine's ``LocalVisBackend`` writes ``WORK_DIR/TIMESTAMP/vis_data/scalars.json``, one json object
per line. Training lines carry ``lr``, the losses (``loss``, ``decode.loss_ce``, ``loss_rpn_cls``, ...)
and ``iter``; validation lines carry the metrics (``mIoU``, ``aAcc``, ``coco/bbox_mAP``, ...) and
``step``, which is the epoch for epoch-based runs and the iteration otherwise.

matplotlib is imported only when drawing, and only through its Agg canvas (no display needed).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Keys of a log line that are bookkeeping, not something to plot by default.
BOOKKEEPING_KEYS = frozenset({'step', 'iter', 'epoch', 'time', 'data_time', 'memory', 'eta', 'lr', 'base_lr'})
_LOG_PATTERNS = ('scalars.json', 'vis_data/*.json')

Record = dict[str, float]


@dataclass(frozen=True)
class ScalarLog:
    """The numeric records of one run, split into training and validation lines.

    Args:
        name (str): A short name for legends (the work dir's name).
        path (Path): The json file read.
        train (tuple[dict[str, float], ...]): Training lines (they carry ``lr`` or a loss).
        val (tuple[dict[str, float], ...]): Validation lines.
    """

    name: str
    path: Path
    train: tuple[Record, ...]
    val: tuple[Record, ...]

    @property
    def by_epoch(self) -> bool:
        """Whether validation ``step`` counts epochs (training lines carry ``epoch``)."""
        return any('epoch' in r for r in self.train)

    def keys(self, split: str) -> list[str]:
        """Plottable keys of ``split`` ('train' or 'val') in order of first appearance."""
        records = self.train if split == 'train' else self.val
        return list(dict.fromkeys(k for r in records for k in r if k not in BOOKKEEPING_KEYS))


def is_loss_key(key: str) -> bool:
    """Whether a log key is a loss, e.g. ``loss``, ``decode.loss_ce``, ``loss_rpn_cls``."""
    return key.rsplit('.', 1)[-1].startswith('loss')


def find_scalar_log(path: str | os.PathLike) -> Path:
    """The json log for ``path``: the file itself, or the newest ``scalars.json`` under a work dir.

    Runs are ordered by their timestamp directory's name (``YYYYMMDD_HHMMSS``), then by mtime.

    Args:
        path (str | os.PathLike): A json file or a directory.

    Returns:
        Path: The json file.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f'no such file or directory: {path}')
    for pattern in _LOG_PATTERNS:
        found = [p for p in path.rglob(pattern) if p.is_file()]
        if found:
            return max(found, key=lambda p: (p.parent.parent.name if p.parent.name == 'vis_data' else '',
                                             p.stat().st_mtime))
    raise FileNotFoundError(f'no json scalar logs (*/vis_data/scalars.json) under {path}')


def _run_name(path: Path) -> str:
    """``WORK_DIR`` for ``WORK_DIR/TIMESTAMP/vis_data/x.json``, else the file's stem."""
    if path.parent.name == 'vis_data' and len(path.parents) > 2:
        return path.parents[2].name or path.stem
    return path.stem


def load_scalar_log(path: str | os.PathLike) -> ScalarLog:
    """Read a json-lines scalar log; lines that are not json objects are skipped.

    Args:
        path (str | os.PathLike): A json file or a work dir (see :func:`find_scalar_log`).

    Returns:
        ScalarLog: Its numeric records.
    """
    file = find_scalar_log(path)
    train, val = [], []
    for line in file.read_text().splitlines():
        try:
            raw = json.loads(line)
        except ValueError:
            continue  # a blank line, or the last line of a run that was killed while writing
        if not isinstance(raw, dict):
            continue
        record = {k: float(v) for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not record:
            continue
        is_train = 'lr' in record or any(is_loss_key(k) for k in record)
        (train if is_train else val).append(record)
    if not train and not val:
        raise ValueError(f'{file} holds no json scalar records')
    return ScalarLog(_run_name(file), file, tuple(train), tuple(val))


def _metric_family(key: str) -> str:
    """Metrics drawn on one axis share a family: ``coco/bbox_mAP_50`` -> ``coco/bbox``; mmdet's classwise
    ``coco/circle_precision``, ``coco/square_precision`` -> ``coco/per-class precision``."""
    head, _, tail = key.rpartition('/')
    family = 'per-class precision' if tail.endswith('_precision') else tail.split('_', 1)[0]
    return f'{head}/{family}' if head else family


def _ever_measured(logs: Sequence[ScalarLog], key: str) -> bool:
    """False for a metric that is -1 in every record: COCOeval's "no ground truth in this size range"."""
    return any(record[key] != -1 for log in logs for record in log.val if key in record)


def _select_keys(logs: Sequence[ScalarLog], keys: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Training and validation keys to plot: the losses and all metrics, or those asked for."""
    train_keys = list(dict.fromkeys(k for log in logs for k in log.keys('train')))
    val_keys = list(dict.fromkeys(k for log in logs for k in log.keys('val')))
    if keys is None:
        return [k for k in train_keys if is_loss_key(k)], [k for k in val_keys if _ever_measured(logs, k)]
    missing = [k for k in keys if k not in train_keys and k not in val_keys]
    if missing:
        raise ValueError(f'no such key in the logs: {missing}; training keys: {train_keys}, '
                         f'validation keys: {val_keys}')
    return [k for k in keys if k in train_keys], [k for k in keys if k not in train_keys]


def _series(records: Sequence[Record], key: str, x_key: str) -> tuple[list[float], list[float]]:
    points = [(r.get(x_key, r.get('step', i)), r[key]) for i, r in enumerate(records) if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def _new_figure(nrows: int, ncols: int):
    """A figure on the Agg canvas, without pyplot's global state."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError('plotting logs needs matplotlib: pip install matplotlib') from err
    fig = Figure(figsize=(5.5 * ncols, 3.8 * nrows), layout='constrained')
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False).ravel()


def _label(log: ScalarLog, key: str, many_runs: bool) -> str:
    return f'{log.name}: {key}' if many_runs else key


def plot_loss(logs: Sequence[ScalarLog], keys: Sequence[str], out_file: Path) -> Path:
    """Draw training keys against the iteration on one axis.

    Args:
        logs (Sequence[ScalarLog]): Runs to draw.
        keys (Sequence[str]): Training keys, usually the losses.
        out_file (Path): The png to write.

    Returns:
        Path: ``out_file``.
    """
    fig, (ax, ) = _new_figure(1, 1)
    for log in logs:
        for key in keys:
            x, y = _series(log.train, key, 'iter')
            if x:
                ax.plot(x, y, label=_label(log, key, len(logs) > 1), linewidth=1.2)
    ax.set_xlabel('iteration')
    ax.set_ylabel('loss' if all(is_loss_key(k) for k in keys) else 'value')
    ax.set_title(f'training loss: {", ".join(log.name for log in logs)}')
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
    fig.savefig(out_file, dpi=100)
    return out_file


def plot_metrics(logs: Sequence[ScalarLog], keys: Sequence[str], out_file: Path) -> Path:
    """Draw validation metrics against the step, one axis per metric family.

    Args:
        logs (Sequence[ScalarLog]): Runs to draw.
        keys (Sequence[str]): Validation keys, e.g. ``mIoU`` or ``coco/bbox_mAP``.
        out_file (Path): The png to write.

    Returns:
        Path: ``out_file``.
    """
    families = list(dict.fromkeys(_metric_family(k) for k in keys))
    ncols = min(3, len(families))
    fig, axes = _new_figure(math.ceil(len(families) / ncols), ncols)
    x_label = 'epoch' if all(log.by_epoch for log in logs) else 'iteration'
    for ax, family in zip(axes, families):
        for log in logs:
            for key in (k for k in keys if _metric_family(k) == family):
                x, y = _series(log.val, key, 'step')
                if x:
                    ax.plot(x, y, marker='o', markersize=3, label=_label(log, key, len(logs) > 1))
        ax.set_title(family)
        ax.set_xlabel(x_label)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel('value')
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small')
    for ax in axes[len(families):]:
        ax.set_visible(False)
    fig.suptitle(f'validation metrics: {", ".join(log.name for log in logs)}')
    fig.savefig(out_file, dpi=100)
    return out_file


def plot_logs(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
              keys: Sequence[str] | None = None) -> list[Path]:
    """Write ``loss.png`` and ``metrics.png`` for one or more runs.

    Args:
        paths (Sequence[str | os.PathLike]): Work dirs or json log files.
        out_dir (str | os.PathLike): Where to write the pictures (created if needed).
        keys (Sequence[str], optional): Keys to draw; training keys go to
            ``loss.png``, validation keys to ``metrics.png``. Defaults to None,
            meaning every loss and every validation metric.

    Returns:
        list[Path]: The files written (``metrics.png`` only if there are metrics).
    """
    if not paths:
        raise ValueError('give at least one work dir or json log')
    logs = [load_scalar_log(p) for p in paths]
    train_keys, val_keys = _select_keys(logs, keys)
    if not train_keys and not val_keys:
        raise ValueError(f'nothing to plot: no loss or validation metric in {[str(log.path) for log in logs]}')
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if train_keys:
        written.append(plot_loss(logs, train_keys, out_dir / 'loss.png'))
    if val_keys:
        written.append(plot_metrics(logs, val_keys, out_dir / 'metrics.png'))
    return written
