"""Tiny synthetic datasets shared by the end-to-end tests."""
import pytest

from convnextv2_dense.data import make_ade_demo, make_coco_demo


@pytest.fixture(scope='session')
def ade_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('ade')
    return make_ade_demo(root, num_train=8, num_val=4, size=64, seed=1, log=None).data_root


@pytest.fixture(scope='session')
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('coco')
    return make_coco_demo(root, num_train=4, num_val=3, size=96, seed=1, log=None).data_root

