"""Flip TTA with masks: boxes and masks of every view are brought back before NMS, masks follow boxes."""
import pytest
import torch

pytest.importorskip('mmdet')

from mmdet.structures import DetDataSample  # noqa: E402
from mmengine.config import ConfigDict  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

from convnextv2_dense.mm.det_tta import MaskFlipDetTTAModel  # noqa: E402


class _Detector(torch.nn.Module):
    def test_step(self, data):  # never called: the tests merge given predictions
        raise AssertionError('not used')


def _tta():
    return MaskFlipDetTTAModel(module=_Detector(),
                               tta_cfg=ConfigDict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))


def _view(box, score, mask_cols, flip):
    mask = torch.zeros(1, 6, 10, dtype=torch.bool)
    mask[0, 1:5, mask_cols[0]:mask_cols[1]] = True
    sample = DetDataSample(metainfo=dict(ori_shape=(6, 10), flip=flip, flip_direction='horizontal' if flip else None))
    sample.pred_instances = InstanceData(bboxes=torch.tensor([box], dtype=torch.float32),
                                         scores=torch.tensor([score]), labels=torch.tensor([2]), masks=mask)
    return sample


def test_flipped_view_is_brought_back_and_keeps_its_mask():
    tta = _tta()
    plain = _view([1, 1, 4, 5], 0.6, (1, 4), flip=False)
    flipped = _view([6, 1, 9, 5], 0.9, (6, 9), flip=True)  # the same object, seen in the mirrored image
    (merged,) = tta.merge_preds([[plain, flipped]])
    pred = merged.pred_instances
    assert len(pred) == 1 and pred.scores.tolist() == pytest.approx([0.9])
    assert pred.bboxes[0].tolist() == pytest.approx([1, 1, 4, 5])
    assert pred.masks[0].nonzero()[:, 1].unique().tolist() == [1, 2, 3]  # columns 1..3, back on the left
    assert pred.labels.tolist() == [2]


def test_views_without_masks_merge_as_in_mmdet():
    tta = _tta()
    views = [_view([1, 1, 4, 5], 0.6, (1, 4), False), _view([6, 1, 9, 5], 0.9, (6, 9), True)]
    for view in views:
        del view.pred_instances.masks
    (merged,) = tta.merge_preds([views])
    assert 'masks' not in merged.pred_instances and len(merged.pred_instances) == 1
