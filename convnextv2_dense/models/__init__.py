"""Pure-PyTorch ConvNeXt V2: layers, block, backbone, classifier, arch table and stage selection."""
from .archs import ARCHS, ArchSpec, resolve_arch
from .backbone import ConvNeXtV2
from .block import Block
from .classifier import ConvNeXtV2Classifier
from .layers import GRN, DropPath, LayerNorm2d
from .stage_selection import STAGE_NAMES, select_stages

__all__ = ['ARCHS', 'ArchSpec', 'Block', 'ConvNeXtV2', 'ConvNeXtV2Classifier', 'DropPath', 'GRN',
           'LayerNorm2d', 'STAGE_NAMES', 'resolve_arch', 'select_stages']
