"""Pointing the demo configs at tiny synthetic datasets. ``run_tool`` is the root conftest's fixture of that
name as a plain function, for module-level code and fixtures of wider scope."""
from suite_support import REPO, run_repo_tool as run_tool  # noqa: F401  (re-exported for the e2e tests)


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
