"""Using a trained model: inference on a user's images and videos, backbone feature maps, and export.

The submodules that run models import the mm packages (mmengine, mmseg, mmdet) or onnxruntime, so
nothing is imported here: ``tools/infer.py`` and ``tools/export.py`` import what they need, and
``import convnextv2_dense`` stays torch-only.
"""
