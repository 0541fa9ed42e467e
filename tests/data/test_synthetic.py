"""Tests for the synthetic demo datasets: layouts, labels, COCO annotations, determinism, idempotence."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from convnextv2_dense.data import synthetic
from convnextv2_dense.data.synthetic import (DEMO_DET_CLASSES, DEMO_SEG_ADE_IDS, DEMO_SEG_CLASSES, MARKER_NAME,
                                             make_ade_demo, make_coco_demo, make_demo_data)

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')
SMALL = dict(num_train=6, num_val=3, size=64, seed=0, log=None)
# The first classes of mmseg's ADE20KDataset.METAINFO, in order (id = position + 1).
ADE_CLASSES_HEAD = ('wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed ', 'windowpane',
                    'grass', 'cabinet', 'sidewalk', 'person')


@pytest.fixture(scope='module')
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('demo')
    make_demo_data(out, **SMALL)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def test_seg_classes_are_real_ade20k_classes() -> None:
    assert len(DEMO_SEG_CLASSES) == len(DEMO_SEG_ADE_IDS) == 5
    for name, ade_id in zip(DEMO_SEG_CLASSES, DEMO_SEG_ADE_IDS):
        assert ADE_CLASSES_HEAD[ade_id - 1] == name


def test_ade_layout(demo: Path) -> None:
    base = demo / 'ade' / 'ADEChallengeData2016'
    for split, prefix, count in (('training', 'train', 6), ('validation', 'val', 3)):
        stems = [f'ADE_{prefix}_{i:08d}' for i in range(1, count + 1)]
        assert sorted(p.name for p in (base / 'images' / split).iterdir()) == [f'{s}.jpg' for s in stems]
        assert sorted(p.name for p in (base / 'annotations' / split).iterdir()) == [f'{s}.png' for s in stems]
    assert sorted(p.name for p in base.iterdir()) == ['annotations', 'images']


def test_ade_images_and_labels(demo: Path) -> None:
    base = demo / 'ade' / 'ADEChallengeData2016'
    allowed = {0, *DEMO_SEG_ADE_IDS}
    seen: set[int] = set()
    for image_path in sorted((base / 'images').rglob('*.jpg')):
        label_path = base / 'annotations' / image_path.parent.name / f'{image_path.stem}.png'
        image, label = Image.open(image_path), Image.open(label_path)
        assert image.mode == 'RGB' and label.mode == 'L'
        assert image.size == label.size == (64, 64)
        values = set(np.unique(np.asarray(label)).tolist())
        assert values <= allowed, values
        assert DEMO_SEG_ADE_IDS[0] in values  # the background class is always there
        if image_path.parent.name == 'training':
            seen |= values
    assert seen == allowed  # every class (and some ignore seams) appears in the training split


def test_coco_layout(demo: Path) -> None:
    root = demo / 'coco'
    assert sorted(p.name for p in root.iterdir()) == sorted(['annotations', 'train2017', 'val2017', MARKER_NAME])
    assert sorted(p.name for p in (root / 'annotations').iterdir()) == ['instances_train2017.json',
                                                                      'instances_val2017.json']
    assert len(list((root / 'train2017').glob('*.jpg'))) == 6
    assert len(list((root / 'val2017').glob('*.jpg'))) == 3


@pytest.mark.parametrize('split', ['train2017', 'val2017'])
def test_coco_annotations(demo: Path, split: str) -> None:
    coco = COCO(str(demo / 'coco' / 'annotations' / f'instances_{split}.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(DEMO_DET_CLASSES)
    assert coco.getCatIds() == [1, 2, 3]
    anns = coco.dataset['annotations']
    assert len({a['id'] for a in anns}) == len(anns)
    for info in coco.dataset['images']:
        image = Image.open(demo / 'coco' / split / info['file_name'])
        assert image.mode == 'RGB' and image.size == (info['width'], info['height'])
    for ann in anns:
        info = coco.imgs[ann['image_id']]
        x, y, w, h = ann['bbox']
        assert 0 <= x and 0 <= y and w > 0 and h > 0
        assert x + w <= info['width'] and y + h <= info['height']
        poly = np.asarray(ann['segmentation'][0]).reshape(-1, 2)
        assert len(ann['segmentation']) == 1 and len(poly) >= 3
        np.testing.assert_allclose([x, y, x + w, y + h], [*poly.min(0), *poly.max(0)], atol=0.011)
        assert ann['area'] > 0 and ann['iscrowd'] == 0
        assert ann['category_id'] in (1, 2, 3)
        assert coco.annToMask(ann).sum() == ann['area']
    if split == 'val2017':
        assert any(not coco.getAnnIds(imgIds=i) for i in coco.getImgIds())
    else:
        assert {a['category_id'] for a in anns} == {1, 2, 3}
        assert all(coco.getAnnIds(imgIds=i) for i in coco.getImgIds())


def test_coco_instances_do_not_overlap(demo: Path) -> None:
    coco = COCO(str(demo / 'coco' / 'annotations' / 'instances_train2017.json'))
    for image_id in coco.getImgIds():
        masks = [coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id))]
        assert np.sum(masks, axis=0).max() <= 1


def test_deterministic(demo: Path, tmp_path: Path) -> None:
    make_demo_data(tmp_path, **SMALL)
    assert _files(tmp_path) == _files(demo)


def test_seed_changes_images(demo: Path, tmp_path: Path) -> None:
    make_coco_demo(tmp_path, **{**SMALL, 'seed': 1})
    assert _files(tmp_path / 'train2017') != _files(demo / 'coco' / 'train2017')


def test_image_does_not_depend_on_count(demo: Path, tmp_path: Path) -> None:
    make_ade_demo(tmp_path, **{**SMALL, 'num_train': 2})
    name = 'ADEChallengeData2016/annotations/training/ADE_train_00000002.png'
    assert (tmp_path / name).read_bytes() == (demo / 'ade' / name).read_bytes()


def test_second_call_writes_nothing(tmp_path: Path) -> None:
    first = make_ade_demo(tmp_path / 'ade', **SMALL)
    assert first.written and first.data_root == tmp_path / 'ade' / 'ADEChallengeData2016'
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / 'ade').rglob('*')}
    second = make_ade_demo(tmp_path / 'ade', **SMALL)
    assert not second.written and second.data_root == first.data_root
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / 'ade').rglob('*')} == mtimes


def test_other_parameters_or_force_rewrite(tmp_path: Path) -> None:
    root = tmp_path / 'coco'
    assert make_coco_demo(root, **SMALL).written
    assert make_coco_demo(root, **{**SMALL, 'num_val': 2}).written
    assert len(list((root / 'val2017').glob('*.jpg'))) == 2
    assert json.loads((root / MARKER_NAME).read_text())['params']['num_val'] == 2
    assert make_coco_demo(root, **{**SMALL, 'num_val': 2}, force=True).written
    assert [p.name for p in tmp_path.iterdir()] == ['coco']  # no temporary directories left


def test_foreign_directory_is_not_replaced(tmp_path: Path) -> None:
    root = tmp_path / 'coco'
    (root / 'train2017').mkdir(parents=True)
    with pytest.raises(FileExistsError, match='not empty and was not written by this generator'):
        make_coco_demo(root, **SMALL)
    assert make_coco_demo(root, **SMALL, force=True).written


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_save(image: np.ndarray, path: Path) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, '_save_jpg', failing_save)
    with pytest.raises(KeyboardInterrupt):
        make_ade_demo(tmp_path / 'ade', **SMALL)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('bad', [dict(num_train=0), dict(num_val=0), dict(size=16), dict(seed=-1),
                                 dict(size=64.0)])
def test_invalid_parameters(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_ade_demo(tmp_path, **{**SMALL, **bad})


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='subset of'):
        make_demo_data(tmp_path, datasets=('voc', ), log=None)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture, load_tool) -> None:
    args = ['--out', str(tmp_path), '--num-train', '3', '--num-val', '2', '--size', '48', '--only', 'coco']
    first = subprocess.run([sys.executable, str(REPO / 'tools' / 'make_demo_data.py'), *args], capture_output=True,
                           text=True, cwd=tmp_path, timeout=120)
    assert first.returncode == 0, first.stderr
    assert 'coco: written' in first.stdout and '[coco train2017] 3/3 images' in first.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ['coco']
    tool = load_tool('make_demo_data')
    assert tool.main(args) == 0
    assert 'coco: up to date' in capsys.readouterr().out
    assert tool.main(args + ['--num-val', '0']) == 1
    assert 'error: num_val must be an integer >= 1' in capsys.readouterr().err
