"""tools/infer.py on the demo checkpoints: segmentation, detection (COCO json), backbone features, errors."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from .helpers import REPO, run_tool

SEG = 'configs/demo/upernet_convnextv2_atto_demo.py'
DET = 'configs/demo/mask-rcnn_convnextv2_atto_demo.py'


def _val_images(ade_root):
    return sorted((ade_root / 'images' / 'validation').glob('*.jpg'))


def test_seg_folder_writes_labels_overlays_and_summaries(seg_checkpoint, ade_root, tmp_path):
    out = tmp_path / 'out'
    proc = run_tool('tools/infer.py', SEG, seg_checkpoint, ade_root / 'images' / 'validation',
                    '--out-dir', out, '--device', 'cpu', '--batch-size', 2)
    names = [p.stem for p in _val_images(ade_root)]
    for name in names:
        assert re.search(rf'^{name} 64x64: \w+ \d+\.\d%', proc.stdout, re.M), proc.stdout
        labels = np.asarray(Image.open(out / 'labels' / f'{name}.png'))
        assert labels.shape == (64, 64) and labels.max() < 5
        assert np.asarray(Image.open(out / 'overlays' / f'{name}.png')).shape == (64, 64, 3)
    classes = json.loads((out / 'classes.json').read_text())
    assert [c['name'] for c in classes] == ['wall', 'building', 'sky', 'floor', 'tree']

    # one image alone gives the labels it got in a batch, and those of mmseg's own API on the file
    image = _val_images(ade_root)[1]
    run_tool('tools/infer.py', SEG, seg_checkpoint, image, '--out-dir', tmp_path / 'one', '--device', 'cpu')
    one = np.asarray(Image.open(tmp_path / 'one' / 'labels' / f'{image.stem}.png'))
    assert (one == np.asarray(Image.open(out / 'labels' / f'{image.stem}.png'))).all()
    code = ('import sys, numpy as np, convnextv2_dense; from mmseg.apis import init_model, inference_model;'
            'm = init_model(sys.argv[1], sys.argv[2], device="cpu");'
            'np.save(sys.argv[4], inference_model(m, sys.argv[3]).pred_sem_seg.data[0].numpy())')
    subprocess.run([sys.executable, '-c', code, SEG, str(seg_checkpoint), str(image), str(tmp_path / 'ref.npy')],
                   cwd=REPO, check=True, capture_output=True)
    assert (np.load(tmp_path / 'ref.npy') == one).all()


def test_seg_grayscale_rgba_and_video_inputs(seg_checkpoint, ade_root, tmp_path):
    cv2 = pytest.importorskip('cv2')
    rgb = np.asarray(Image.open(_val_images(ade_root)[0]).convert('RGB'))
    inputs = tmp_path / 'in'
    inputs.mkdir()
    Image.fromarray(rgb).convert('L').save(inputs / 'gray.png')
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]), 'RGBA').save(inputs / 'rgba.png')
    writer = cv2.VideoWriter(str(inputs / 'clip.avi'), cv2.VideoWriter_fourcc(*'MJPG'), 4, (64, 64))
    for _ in range(2):
        writer.write(np.ascontiguousarray(rgb[..., ::-1]))
    writer.release()
    out = tmp_path / 'out'
    proc = run_tool('tools/infer.py', SEG, seg_checkpoint, inputs, '--out-dir', out, '--device', 'cpu')
    assert 'gray 64x64' in proc.stdout and 'rgba 64x64' in proc.stdout and 'clip/000001 64x64' in proc.stdout
    assert (out / 'labels' / 'clip' / '000001.png').is_file() and (out / 'overlays' / 'clip.mp4').stat().st_size
    assert (out / 'overlays' / 'gray.png').is_file() and (out / 'labels' / 'rgba.png').is_file()


def test_det_writes_coco_json_that_coco_eval_accepts(det_checkpoint, coco_root, tmp_path):
    ann = coco_root / 'annotations' / 'instances_val2017.json'
    out = tmp_path / 'out'
    proc = run_tool('tools/infer.py', DET, det_checkpoint, coco_root / 'val2017', '--out-dir', out,
                    '--device', 'cpu', '--coco-ann', ann, '--score-thr', '0.05', '--batch-size', 2)
    images = json.loads(ann.read_text())['images']
    for image in images:
        stem = image['file_name'].rsplit('.', 1)[0]
        assert re.search(rf'^{stem} \d+x\d+: \d+ objects >= 0\.05', proc.stdout, re.M), proc.stdout
        assert (out / 'overlays' / f'{stem}.png').is_file()
    predictions = json.loads((out / 'predictions.json').read_text())
    assert predictions and {p['image_id'] for p in predictions} <= {i['id'] for i in images}
    assert all(p['segmentation']['size'] for p in predictions) and 'file_name' in predictions[0]
    proc = run_tool('tools/coco_eval.py', '--ann', ann, '--results', out / 'predictions.json',
                    '--json-out', tmp_path / 'ap.json')
    assert set(json.loads((tmp_path / 'ap.json').read_text())) == {'segm'}
    proc = run_tool('tools/coco_eval.py', '--ann', ann, '--results', out / 'predictions.json', '--iou-type', 'bbox')
    assert 'Average Precision' in proc.stdout

    # batches of 2 (padded together by mmdet's preprocessor) give what images one by one give
    run_tool('tools/infer.py', DET, det_checkpoint, coco_root / 'val2017', '--out-dir', tmp_path / 'one',
             '--device', 'cpu', '--coco-ann', ann)
    one = json.loads((tmp_path / 'one' / 'predictions.json').read_text())
    assert len(one) == len(predictions)
    for a, b in zip(one, predictions):
        assert a['image_id'] == b['image_id'] and a['category_id'] == b['category_id']
        assert np.allclose(a['bbox'], b['bbox'], atol=0.05) and abs(a['score'] - b['score']) < 1e-3


def test_backbone_mode_writes_feature_maps_and_pictures(seg_checkpoint, ade_root, tmp_path):
    image = _val_images(ade_root)[0]
    proc = run_tool('tools/infer.py', '--backbone', seg_checkpoint, image, '--out-dir', tmp_path,
                    '--device', 'cpu')
    assert re.search(rf'{image.stem} 64x64: stage1 40x16x16, stage2 80x8x8, stage3 160x4x4, stage4 320x2x2',
                     proc.stdout), proc.stdout
    maps = np.load(tmp_path / 'features' / f'{image.stem}.npz')
    assert sorted(maps.files) == ['stage1', 'stage2', 'stage3', 'stage4']
    for stage in maps.files:
        assert np.asarray(Image.open(tmp_path / 'features' / f'{image.stem}_{stage}.png')).shape == (64, 64, 3)
    # the same numbers as the backbone run directly, as a PyTorch user would
    import torch

    from convnextv2_dense import ConvNeXtV2
    model = ConvNeXtV2.from_pretrained(str(seg_checkpoint)).eval()
    x = torch.from_numpy(np.asarray(Image.open(image).convert('RGB'))).permute(2, 0, 1)[None].float()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model((x - mean) / std)
    for stage, ref in zip(('stage1', 'stage2', 'stage3', 'stage4'), expected):
        np.testing.assert_allclose(maps[stage], ref[0].numpy(), rtol=1e-4, atol=1e-4)


def test_missing_and_unreadable_images_are_named(seg_checkpoint, tmp_path):
    proc = run_tool('tools/infer.py', SEG, seg_checkpoint, tmp_path / 'nope.jpg', check=False)
    assert proc.returncode == 1 and 'input not found' in proc.stderr and 'nope.jpg' in proc.stderr
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'\x89PNG but not really')
    proc = run_tool('tools/infer.py', SEG, seg_checkpoint, bad, '--out-dir', tmp_path / 'o', check=False)
    assert proc.returncode == 1 and 'cannot read image' in proc.stderr and 'bad.png' in proc.stderr


def test_checkpoint_that_does_not_fit_names_keys_and_shapes(seg_checkpoint, det_checkpoint, ade_root, tmp_path):
    image = _val_images(ade_root)[0]
    proc = run_tool('tools/infer.py', SEG, det_checkpoint, image, '--out-dir', tmp_path, check=False)
    assert proc.returncode == 1 and 'does not fit the model of the config' in proc.stderr
    assert 'missing from the checkpoint: ' in proc.stderr and 'decode_head.' in proc.stderr
    assert 'not in the model: ' in proc.stderr and 'roi_head ' in proc.stderr  # by module: ... roi_head N
    proc = run_tool('tools/infer.py', SEG, seg_checkpoint, image, '--out-dir', tmp_path,
                    '--cfg-options', 'model.decode_head.num_classes=7', check=False)
    assert proc.returncode == 1
    assert 'decode_head.conv_seg.weight: checkpoint (5, 64, 1, 1), model (7, 64, 1, 1)' in proc.stderr


def test_missing_checkpoint_and_wrong_options_are_errors(ade_root, tmp_path):
    image = _val_images(ade_root)[0]
    proc = run_tool('tools/infer.py', SEG, tmp_path / 'none.pth', image, check=False)
    assert proc.returncode == 1 and 'checkpoint not found' in proc.stderr
    proc = run_tool('tools/infer.py', '--backbone', 'x', image, '--score-thr', '0.5', check=False)
    assert proc.returncode == 2 and '--score-thr applies to a config and checkpoint' in proc.stderr


def test_python_m_dispatch(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'convnextv2_dense', 'infer', '--help'], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and 'python -m convnextv2_dense infer' in proc.stdout and '--backbone' in proc.stdout
    proc = subprocess.run([sys.executable, '-m', 'convnextv2_dense', 'nonsense'], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "unknown command 'nonsense'" in proc.stderr


class _RunsCode:
    def __reduce__(self):
        return (print, ('code ran while unpickling',))


def test_checkpoint_is_read_safely(seg_checkpoint, ade_root, tmp_path):
    import torch
    from mmengine.logging import HistoryBuffer
    image = _val_images(ade_root)[0]
    checkpoint = torch.load(seg_checkpoint, map_location='cpu', weights_only=False)
    checkpoint['message_hub'] = {'log_scalars': {'loss': HistoryBuffer([1.0, 2.0], [1, 1])}}  # as stock mmengine
    torch.save(checkpoint, tmp_path / 'stock.pth')
    proc = run_tool('tools/infer.py', SEG, tmp_path / 'stock.pth', image, '--out-dir', tmp_path / 'o')
    assert f'{image.stem} 64x64' in proc.stdout
    checkpoint['meta']['extra'] = _RunsCode()
    torch.save(checkpoint, tmp_path / 'unsafe.pth')
    proc = run_tool('tools/infer.py', SEG, tmp_path / 'unsafe.pth', image, '--out-dir', tmp_path / 'o', check=False)
    assert proc.returncode == 1 and 'refused to load' in proc.stderr and '--trust-checkpoint' in proc.stderr
    assert 'code ran while unpickling' not in proc.stdout + proc.stderr
