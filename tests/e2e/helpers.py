"""Pointing the demo configs at tiny synthetic datasets (tools run through the root conftest's ``run_tool``)."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_tool(*args, check=True, timeout=600):
    """The root conftest's ``run_tool`` fixture (``suite_support.run_repo_tool``), for module-level code and
    fixtures of wider scope: ``python tools/...`` from the repo root, output captured."""
    from suite_support import run_repo_tool
    return run_repo_tool(*args, check=check, timeout=timeout)


def seg_options(data_root, **extra):
    opts = {f'{loader}.dataset.data_root': data_root for loader in
            ('train_dataloader', 'val_dataloader', 'test_dataloader')}
    opts.update({'train_dataloader.batch_size': 2, 'val_dataloader.batch_size': 2,
                 'test_dataloader.batch_size': 2, 'train_dataloader.num_workers': 0,
                 'val_dataloader.num_workers': 0, 'test_dataloader.num_workers': 0,
                 'train_dataloader.persistent_workers': False, 'val_dataloader.persistent_workers': False,
                 'test_dataloader.persistent_workers': False})
    opts.update(extra)
    return ['--cfg-options', *(f'{k}={v}' for k, v in opts.items())]


def det_options(data_root, **extra):
    ann = f'{data_root}/annotations/instances_val2017.json'
    return seg_options(f'{data_root}/', **{'val_evaluator.ann_file': ann, 'test_evaluator.ann_file': ann,
                                          **extra})
