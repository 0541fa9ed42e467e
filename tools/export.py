"""Export to ONNX or ``torch.export`` and check the file against eager PyTorch before keeping it.

    python tools/export.py backbone SOURCE --out convnextv2.onnx
    python tools/export.py segmentor CONFIG CHECKPOINT --out upernet.onnx
    python tools/export.py detector CONFIG CHECKPOINT --out mask-rcnn-features.onnx [--fp16]

Same as ``python -m convnextv2_dense export``; ``--help`` lists the options. The logic lives in
:mod:`convnextv2_dense.inference.export_cli`.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from convnextv2_dense.inference.export_cli import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
