"""Backbone-only inference: each selected stage's feature map as ``.npz`` and as a PCA picture.

For people who use ConvNeXt V2 as a feature extractor. The backbone comes from any source
:meth:`ConvNeXtV2.from_pretrained` reads (HF repo id or directory, official / timm / mmpretrain file,
ours); images are normalised with ImageNet's mean and std, as the released weights were trained.
"""
from __future__ import annotations

import os
import os.path as osp
from collections.abc import Sequence

import numpy as np
import torch

from .drawing import pca_picture
from .export_modules import BackboneExport
from .outputs import save_png
from .sources import Frame

STAGES: tuple[str, ...] = ('stem', 'stage1', 'stage2', 'stage3', 'stage4')


def load_backbone(source: str, out_features: Sequence[str] | None = None, device: str = 'cpu') -> BackboneExport:
    """A pretrained backbone wrapped with its input normalisation, in eval mode.

    Args:
        source (str): Anything :meth:`ConvNeXtV2.from_pretrained` reads.
        out_features (Sequence[str], optional): Stage names; defaults to stage1..stage4.
        device (str): Defaults to 'cpu'.

    Returns:
        BackboneExport: Takes an RGB 0..255 batch, returns one map per stage.
    """
    from ..models import ConvNeXtV2
    features = list(out_features) if out_features else ['stage1', 'stage2', 'stage3', 'stage4']
    backbone = ConvNeXtV2.from_pretrained(source, out_features=features)
    return BackboneExport(backbone).to(device).eval()


def extract(model: BackboneExport, frames: Sequence[Frame]) -> list[dict[str, np.ndarray]]:
    """Feature maps of same-size frames: per frame, ``{stage: (C, H, W) float32}``."""
    device = next(model.parameters()).device
    batch = torch.from_numpy(np.stack([f.rgb for f in frames])).permute(0, 3, 1, 2).float().to(device)
    with torch.no_grad():
        outs = model(batch)
    return [{name: out[i].float().cpu().numpy() for name, out in zip(model.output_names, outs)}
            for i in range(len(frames))]


def stage_picture(feature: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The PCA picture of one ``(C, h, w)`` map, enlarged (nearest) to ``size`` = (H, W) for viewing."""
    from PIL import Image
    picture = Image.fromarray(pca_picture(feature)).resize((size[1], size[0]), Image.NEAREST)
    return np.asarray(picture)


def write_features(out_dir: str, frame: Frame, maps: dict[str, np.ndarray]) -> list[str]:
    """``features/NAME.npz`` (one array per stage) and ``features/NAME_STAGE.png`` pictures."""
    base = osp.join(out_dir, 'features', frame.name)
    os.makedirs(osp.dirname(base), exist_ok=True)
    np.savez_compressed(base + '.npz', **maps)
    written = [base + '.npz']
    for name, feature in maps.items():
        save_png(stage_picture(feature, frame.rgb.shape[:2]), f'{base}_{name}.png')
        written.append(f'{base}_{name}.png')
    return written


def feature_summary(frame: Frame, maps: dict[str, np.ndarray]) -> str:
    """``'img1 128x128: stage1 40x32x32, stage2 80x16x16, ...'`` (channels x height x width)."""
    height, width = frame.rgb.shape[:2]
    shapes = ', '.join(f'{name} {"x".join(str(d) for d in m.shape)}' for name, m in maps.items())
    return f'{frame.name} {width}x{height}: {shapes}'
