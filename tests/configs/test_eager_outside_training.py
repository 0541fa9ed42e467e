"""The shipped configs, built as they are and with ``compile=True`` (a user's switch for training), work
with the tools that never train: mmengine's FLOPs counter as mmseg's / mmdet's ``get_flops.py`` drive it, ``torch.jit.trace`` of
the backbone, and mmseg's / mmdet's inference APIs, none of which compiles anything.

What a test changes is named where it does it: only the test images' resize (64x64 instead of 512 / 800,
for CPU time) and ``compile=True`` (COMPILE_ON) to show the rule holds when a user turns it on. No
pretrained download happens: building a model does not load ``init_cfg``, and the inference APIs clear it.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')

from mmengine.analysis import get_model_complexity_info  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.model import revert_sync_batchnorm  # noqa: E402
from mmengine.registry import MODELS, init_default_scope  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'
UPERNET = CONFIGS / 'upernet_convnextv2_atto_ade20k.py'
MASK_RCNN = CONFIGS / 'mask-rcnn_convnextv2_atto_fpn_1x_coco.py'
SIZE = 64
COMPILE_ON = {'model.backbone.compile': True}


@pytest.fixture
def no_compile(monkeypatch):
    """Fail on any torch.compile call, and check afterwards that dynamo captured no frame."""
    import torch._dynamo.utils

    def refuse(*args, **kwargs):
        raise AssertionError('torch.compile was called outside training')

    monkeypatch.setattr(torch, 'compile', refuse)
    frames = dict(torch._dynamo.utils.counters['frames'])
    yield
    assert dict(torch._dynamo.utils.counters['frames']) == frames


def load(path: Path, **options) -> Config:
    cfg = Config.fromfile(str(path))
    cfg.merge_from_dict(options)
    init_default_scope(cfg.default_scope)
    return cfg


@pytest.mark.parametrize('options', [{}, COMPILE_ON], ids=['as shipped', 'compile=True'])
def test_get_flops_of_an_upernet_config(options, no_compile):
    from mmseg.structures import SegDataSample
    model = revert_sync_batchnorm(MODELS.build(load(UPERNET, **options).model))  # as mmseg's get_flops.py does
    model.auxiliary_head = None
    shape = dict(ori_shape=(SIZE, SIZE), pad_shape=(SIZE, SIZE))
    data = model.data_preprocessor({'inputs': [torch.rand(3, SIZE, SIZE)],
                                   'data_samples': [SegDataSample(metainfo=shape)]})
    model.eval()
    result = get_model_complexity_info(model, None, inputs=data['inputs'], show_table=False, show_arch=False)
    assert result['flops'] > 0 and result['params'] > 0
    assert '_compiled' not in model.backbone.__dict__


@pytest.mark.parametrize('options', [{}, COMPILE_ON], ids=['as shipped', 'compile=True'])
def test_get_flops_of_a_mask_rcnn_config(options, no_compile):
    from mmdet.structures import DetDataSample
    model = revert_sync_batchnorm(MODELS.build(load(MASK_RCNN, **options).model))  # as mmdet's get_flops.py
    model.eval()
    meta = dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE), scale_factor=(1.0, 1.0))
    data = model.data_preprocessor({'inputs': [torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8)],
                                   'data_samples': [DetDataSample(metainfo=meta)]})
    model.forward = partial(model.forward, data_samples=data['data_samples'])
    result = get_model_complexity_info(model, None, inputs=data['inputs'], show_table=False, show_arch=False)
    assert result['flops'] > 0
    assert '_compiled' not in model.backbone.__dict__


def test_jit_trace_of_the_backbone_of_an_upernet_config_with_compile_on(no_compile):
    backbone = MODELS.build(load(UPERNET, **COMPILE_ON).model.backbone)
    assert backbone.training and backbone.compile_cfg is not None  # as built for training, compile on
    x = torch.randn(1, 3, SIZE, SIZE)
    in_training = torch.jit.trace(backbone, x, check_trace=False)  # drop path is on: outputs are random
    assert [o.shape for o in in_training(x)] == [(1, c, SIZE // s, SIZE // s)
                                               for c, s in zip(backbone.out_channels, backbone.strides)]
    backbone.eval()
    for out, ref in zip(torch.jit.trace(backbone, x)(x), backbone(x)):
        torch.testing.assert_close(out, ref)


def small_test_images(cfg_path: Path) -> dict:
    """``--cfg-options`` that make the test pipeline's Resize produce SIZE x SIZE images."""
    pipeline = Config.fromfile(str(cfg_path)).test_pipeline
    index = next(i for i, t in enumerate(pipeline) if t['type'].split('.')[-1] == 'Resize')
    return {f'test_pipeline.{index}.scale': (SIZE, SIZE), f'test_pipeline.{index}.keep_ratio': False}


def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)


def test_mmseg_inference_api_with_compile_on_runs_eager(tmp_path, no_compile):
    from mmseg.apis import inference_model, init_model
    checkpoint = tmp_path / 'upernet.pth'
    model = MODELS.build(load(UPERNET).model)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, checkpoint)
    model = init_model(str(UPERNET), str(checkpoint), device='cpu',
                       cfg_options={**COMPILE_ON, **small_test_images(UPERNET)})
    assert model.backbone.compile_cfg is not None  # compile=True from the options, unused here
    result = inference_model(model, image())
    assert result.pred_sem_seg.data.shape == (1, 48, 80)
    assert '_compiled' not in model.backbone.__dict__


def test_mmdet_inference_api_with_compile_on_runs_eager(tmp_path, no_compile):
    from mmdet.apis import inference_detector, init_detector
    options = {**COMPILE_ON, **small_test_images(MASK_RCNN)}
    checkpoint = tmp_path / 'mask-rcnn.pth'
    torch.save({'state_dict': MODELS.build(load(MASK_RCNN, **options).model).state_dict(), 'meta': {}}, checkpoint)
    model = init_detector(str(MASK_RCNN), str(checkpoint), device='cpu', cfg_options=options)
    result = inference_detector(model, image())
    assert result.pred_instances.bboxes.shape[1:] == (4,)
    assert '_compiled' not in model.backbone.__dict__
