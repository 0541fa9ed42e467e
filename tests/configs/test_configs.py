"""Every leaf config: it loads from an absolute path, says the arch its file name says, feeds its heads
the backbone's real channels, builds, and (atto..base) runs one training and one inference forward.

large and huge are built on the meta device (exact structure and parameter counts, no memory, no
init time) and run a shape-only forward, which is enough to catch a channel mismatch.
"""
from __future__ import annotations

import copy
import functools
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')

from mmengine.config import Config  # noqa: E402
from mmengine.registry import MODELS, init_default_scope  # noqa: E402

from convnextv2_dense import ARCHS, ConvNeXtV2  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / 'configs'
LEAVES = sorted([*CONFIGS.glob('*.py'), *(CONFIGS / 'demo').glob('*.py')])
ARCH_IN_NAME = re.compile(r'_convnextv2_([a-z]+)[-_]')
BIG = ('large', 'huge')


@functools.cache
def _load(path: Path) -> Config:
    return Config.fromfile(str(path))


def name_of(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def arch_of(path: Path) -> str:
    """The arch the file name promises (``_convnextv2_ARCH_`` or ``_convnextv2_ARCH-TAG_``)."""
    found = ARCH_IN_NAME.search(path.name)
    assert found, f'{path.name} does not say its arch as _convnextv2_ARCH_'
    return found.group(1)


def select(predicate) -> list:
    return [pytest.param(p, id=name_of(p)) for p in LEAVES if predicate(p)]


# What a config is, read from its content (scope, model, schedule), never from its file name.
def is_seg(path: Path) -> bool:
    return _load(path).default_scope == 'mmseg'


def detector_of(path: Path) -> str | None:
    """``'MaskRCNN'``, ``'CascadeRCNN'``, ... for an mmdet config; None for any other."""
    cfg = _load(path)
    return cfg.model.type if cfg.default_scope == 'mmdet' else None


def is_demo(path: Path) -> bool:
    return path.parent.name == 'demo'


def arch_built(path: Path) -> str:
    return _load(path).model.backbone.arch


def is_three_x_mask_rcnn(path: Path) -> bool:
    return detector_of(path) == 'MaskRCNNFast' and _load(path).train_cfg.get('max_epochs') == 36


def one_x_of(path: Path) -> Path:
    """The 1x leaf of the same arch: the model a 3x leaf builds, with the 12-epoch recipe."""
    return CONFIGS / f'mask-rcnn_convnextv2_{arch_of(path)}_fpn_1x_coco.py'


ALL = select(lambda p: True)
SEG = select(is_seg)
DET = select(lambda p: detector_of(p) is not None)
RELEASED = select(lambda p: not is_demo(p))
THREE_X = select(is_three_x_mask_rcnn)
MASK_RCNN = select(lambda p: detector_of(p) == 'MaskRCNNFast')
UPERNET = select(lambda p: is_seg(p) and not is_demo(p))
# a 3x leaf builds the model of its 1x sibling (checked below), so only the 1x one runs forwards
SMALL = select(lambda p: arch_built(p) not in BIG and not is_three_x_mask_rcnn(p))
LARGE = select(lambda p: arch_built(p) in BIG)


def load(path: Path) -> Config:
    """``Config.fromfile`` of an absolute path, read once per file; a private copy for each caller."""
    assert path.is_absolute()
    return copy.deepcopy(_load(path))


def backbone_of(cfg: Config) -> ConvNeXtV2:
    """The configured backbone on the meta device: real attributes, no memory."""
    args = {k: v for k, v in cfg.model.backbone.items() if k not in ('type', 'init_cfg', 'compile')}
    with torch.device('meta'):
        return ConvNeXtV2(**args)


def build(cfg: Config, device: str = 'cpu') -> torch.nn.Module:
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.compile = False  # shapes and wiring here; compile itself is tested in tests/models
    with torch.device(device):
        return MODELS.build(cfg.model)


# ----------------------------------------------------------------------------------- the leaf set
def test_every_arch_has_upernet_and_mask_rcnn_1x_and_3x_configs():
    names = {p.name for p in LEAVES}
    missing = [n for arch in ARCHS for n in (f'upernet_convnextv2_{arch}_ade20k.py',
                                             f'mask-rcnn_convnextv2_{arch}_fpn_1x_coco.py',
                                             f'mask-rcnn_convnextv2_{arch}_fpn_3x_coco.py',
                                             f'mask-rcnn_convnextv2_{arch}-in1k-ft-pre_fpn_3x_coco.py')
               if n not in names]
    assert missing == []


@pytest.mark.parametrize('path', ALL)
def test_loads_from_an_absolute_path(path):
    assert load(path).model.backbone.type == 'ConvNeXtV2'


HEAD_IN_NAME = {'upernet_': 'GraphedEncoderDecoder', 'mask-rcnn_': 'MaskRCNNFast', 'cascade-mask-rcnn_': 'CascadeRCNN'}


@pytest.mark.parametrize('path', ALL)
def test_file_name_says_the_model_and_schedule_it_configures(path):
    """The tests select configs by content; this keeps each file name's promise about that content."""
    cfg = load(path)
    head = [model for prefix, model in HEAD_IN_NAME.items() if path.name.startswith(prefix)]
    assert head == [cfg.model.type]
    assert ('_3x_' in path.name) == (cfg.train_cfg.get('max_epochs') == 36)
    assert ('_1x_' in path.name) == (cfg.train_cfg.get('max_epochs') == 12 and not is_demo(path))


@pytest.mark.parametrize('path', ALL)
def test_arch_in_the_file_name_is_the_configured_arch(path):
    assert load(path).model.backbone.arch == arch_of(path)


# -------------------------------------------------------------------------------------- channels
@pytest.mark.parametrize('path', SEG)
def test_decode_head_gets_the_backbone_channels(path):
    cfg = load(path)
    assert list(cfg.model.decode_head.in_channels) == list(backbone_of(cfg).out_channels)


@pytest.mark.parametrize('path', SEG)
def test_auxiliary_head_reads_stage3(path):
    cfg = load(path)
    backbone, aux = backbone_of(cfg), cfg.model.auxiliary_head
    stage3 = ARCHS[arch_of(path)].dims[2]
    assert (backbone.out_features[aux.in_index], aux.in_channels) == ('stage3', stage3)


@pytest.mark.parametrize('path', DET)
def test_neck_gets_the_backbone_channels(path):
    cfg = load(path)
    assert list(cfg.model.neck.in_channels) == list(backbone_of(cfg).out_channels)


@pytest.mark.parametrize('path', RELEASED)
def test_checkpoint_is_of_the_same_arch(path):
    cfg = load(path)
    assert f'convnextv2_{arch_of(path)}_' in cfg.checkpoint
    assert cfg.model.backbone.init_cfg == dict(type='Pretrained', checkpoint=cfg.checkpoint)


# The official release (facebookresearch/ConvNeXt-V2 README): FCMAE pre-training only, and FCMAE then
# supervised ImageNet-1K fine-tuning; both exist for all eight archs.
FCMAE = 'https://dl.fbaipublicfiles.com/convnext/convnextv2/pt_only/convnextv2_{arch}_1k_224_fcmae.pt'
FINE_TUNED = 'https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_{arch}_1k_224_ema.pt'


def expected_start(path: Path) -> str:
    """The paper starts COCO from the FCMAE pre-training and ADE20K from the fine-tuned weights. The 3x leaves
    follow the paper; their `-in1k-ft-pre` variants, the 1x and Cascade leaves start from the fine-tuned ones."""
    paper_coco = is_three_x_mask_rcnn(path) and '-in1k-ft-pre_' not in path.name
    return (FCMAE if paper_coco else FINE_TUNED).format(arch=arch_of(path))


@pytest.mark.parametrize('path', RELEASED)
def test_starts_from_the_official_weights_the_recipe_names(path):
    assert load(path).model.backbone.init_cfg.checkpoint == expected_start(path)


@pytest.mark.parametrize('path', select(lambda p: '-in1k-ft-pre_' in p.name))
def test_fine_tuned_start_variant_is_its_paper_leaf_but_for_the_checkpoint(path):
    variant = load(path)
    paper = load(path.with_name(path.name.replace('-in1k-ft-pre_', '_')))
    variant.model.backbone.init_cfg.checkpoint = paper.model.backbone.init_cfg.checkpoint
    variant.checkpoint = paper.checkpoint
    assert variant.to_dict() == paper.to_dict()


@pytest.mark.parametrize('path', select(is_demo))
def test_demo_configs_train_from_scratch(path):
    assert load(path).model.backbone.get('init_cfg') is None


# ------------------------------------------------------------------------- build + one forward each
def seg_batch(n: int = 2, size: int = 64) -> dict:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(n):
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 5, (1, size, size), generator=gen))
        samples.append(sample)
    images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=gen) for _ in range(n)]
    return dict(inputs=images, data_samples=samples)


def det_batch(size: int = 128) -> dict:
    from mmengine.structures import InstanceData
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    boxes = [(10, 12, 60, 70), (50, 40, 120, 110)]
    masks = np.zeros((len(boxes), size, size), dtype=np.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes):
        mask[y1:y2, x1:x2] = 1
    gt = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32), labels=torch.tensor([0, 1]),
                      masks=BitmapMasks(masks, size, size))
    sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), scale_factor=(1.0, 1.0)))
    sample.gt_instances = gt
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return dict(inputs=[image], data_samples=[sample])


@pytest.fixture(scope='module', params=SMALL)
def built(request):
    """(path, model) for one small-arch leaf, with the data preprocessor sized for tiny inputs."""
    path = request.param
    cfg = load(path)
    if is_seg(path):
        cfg.model.data_preprocessor.size = (64, 64)  # the recipe pads every input to its 512 crop
    else:  # random weights score below 0.05: keep every box so that soft-NMS and the mask head run,
        # on few proposals so that this stays fast
        cfg.model.test_cfg.rpn.update(nms_pre=200, max_per_img=50)
        cfg.model.test_cfg.rcnn.update(score_thr=0.0, max_per_img=10)
    torch.manual_seed(0)
    return path, build(cfg)


def test_built_backbone_is_the_file_names_arch(built):
    path, model = built
    assert (type(model.backbone), model.backbone.arch) == (ConvNeXtV2, arch_of(path))


def test_loss_forward(built):
    path, model = built
    model.train()
    data = model.data_preprocessor(seg_batch() if is_seg(path) else det_batch(), training=True)
    losses = model(**data, mode='loss')
    parsed, _ = model.parse_losses(losses)
    assert parsed.requires_grad and math.isfinite(parsed.item()) and parsed.item() > 0


def test_predict_forward(built):
    path, model = built
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(seg_batch() if is_seg(path) else det_batch(), training=False)
        results = model(**data, mode='predict')
    if is_seg(path):
        shapes = [tuple(r.pred_sem_seg.data.shape) for r in results]
        assert shapes == [(1, 64, 64)] * 2
    else:
        pred = results[0].pred_instances
        assert len(pred) > 0 and tuple(pred.masks.shape[1:]) == (128, 128)


@pytest.mark.parametrize('path', LARGE)
def test_large_archs_build_and_their_heads_take_the_features(path):
    cfg = load(path)
    model = build(cfg, device='meta').eval()
    with torch.device('meta'), torch.no_grad():
        feats = model.extract_feat(torch.empty(1, 3, 64, 64))
        out = model.decode_head(feats) if is_seg(path) else feats
    shape, expected = ((out.shape, (1, cfg.model.decode_head.num_classes, 16, 16)) if is_seg(path)
                       else (out[0].shape, (1, cfg.model.neck.out_channels, 16, 16)))
    assert (model.backbone.arch, tuple(shape)) == (arch_of(path), expected)


@pytest.mark.parametrize('arch, millions', [('base', 122), ('large', 235), ('huge', 707)])
def test_upernet_parameter_count(arch, millions):
    model = build(load(CONFIGS / f'upernet_convnextv2_{arch}_ade20k.py'), device='meta')
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.5)


# -------------------------------------------------------------------------------------- recipes
def transform(pipeline, name: str) -> dict:
    found = [t for t in pipeline if t['type'] == name]
    assert len(found) == 1, f'{len(found)} {name} transforms'
    return found[0]


@pytest.mark.parametrize('path', THREE_X)
def test_3x_model_is_its_1x_siblings_model_but_for_the_start(path):
    three_x, one_x = load(path).model.to_dict(), load(one_x_of(path)).model.to_dict()
    for model in (three_x, one_x):
        model['backbone']['init_cfg'].pop('checkpoint')
    assert three_x == one_x


@pytest.mark.parametrize('path', THREE_X)
def test_3x_schedule_is_36_epochs_with_steps_at_27_and_33(path):
    cfg = load(path)
    steps = [s for s in cfg.param_scheduler if s['type'] == 'MultiStepLR']
    assert (cfg.train_cfg.max_epochs, [list(s['milestones']) for s in steps]) == (36, [[27, 33]])


@pytest.mark.parametrize('path', THREE_X)
def test_3x_uses_large_scale_jitter(path):
    resize = transform(load(path).train_dataloader.dataset.pipeline, 'RandomResize')
    assert (tuple(resize['scale']), tuple(resize['ratio_range'])) == ((1024, 1024), (0.1, 2.0))


@pytest.mark.parametrize('path', MASK_RCNN)
def test_mask_rcnn_tests_with_soft_nms(path):
    assert load(path).model.test_cfg.rcnn.nms.type == 'soft_nms'


@pytest.mark.parametrize('path', UPERNET)
def test_upernet_trains_160k_iterations(path):
    cfg = load(path)
    assert (cfg.train_cfg.max_iters, cfg.param_scheduler[-1]['end']) == (160000, 160000)


@pytest.mark.parametrize('path', UPERNET)
def test_upernet_crops_512(path):
    cfg = load(path)
    crop = transform(cfg.train_dataloader.dataset.pipeline, 'RandomCrop')['crop_size']
    assert (tuple(crop), tuple(cfg.model.data_preprocessor.size)) == ((512, 512), (512, 512))


@pytest.mark.parametrize('path', UPERNET)
def test_upernet_slide_test_stride_341(path):
    test_cfg = load(path).model.test_cfg
    assert (test_cfg.mode, tuple(test_cfg.crop_size), tuple(test_cfg.stride)) == ('slide', (512, 512), (341, 341))


@pytest.mark.parametrize('path', UPERNET)
def test_upernet_auxiliary_loss_weight_is_0_4(path):
    assert load(path).model.auxiliary_head.loss_decode.loss_weight == 0.4


@pytest.mark.parametrize('path', UPERNET)
def test_upernet_lr_is_for_batch_16(path):
    assert load(path).auto_scale_lr.base_batch_size == 16


@pytest.mark.parametrize('path', LEAVES, ids=lambda p: p.name)
def test_no_shipped_config_compiles(path):
    # UperNet's CUDA graph step beat compile there, the RoI-head detectors gained ~0 (README, "Speed")
    assert load(path).model.backbone.compile is False


@pytest.mark.parametrize('path', LEAVES, ids=lambda p: p.name)
def test_training_freezes_start_up_objects_out_of_the_garbage_collector(path):
    # with mmseg's and mmdet's own tools/train.py too, not only ours (which adds the hook where it is missing)
    assert [hook['type'] for hook in load(path).custom_hooks].count('GcFreezeHook') == 1
