"""Run a trained model on your images: ``python tools/infer.py CONFIG CHECKPOINT INPUT [INPUT ...]``.

Segmentation writes label PNGs and colour overlays; detection writes overlays and one COCO-format
``predictions.json`` (``tools/coco_eval.py`` reads it). ``--backbone SOURCE`` writes ConvNeXt V2
feature maps (``.npz``) and their PCA pictures instead. The same command is
``python -m convnextv2_dense infer``; ``--help`` lists the options. The logic lives in
:mod:`convnextv2_dense.inference.infer_cli`.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from convnextv2_dense.inference.infer_cli import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
