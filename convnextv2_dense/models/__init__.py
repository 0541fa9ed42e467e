"""Pure-PyTorch ConvNeXt V2: layers, block, backbone, classifier, arch table, stage selection, and the
declarations other rooms read (parameter naming, load policy, HF config fields)."""
from .activations import ACTIVATIONS
from .archs import ARCHS, ArchSpec, resolve_arch
from .backbone import ConvNeXtV2
from .block import Block
from .classifier import ConvNeXtV2Classifier
from .layers import GRN, DropPath, LayerNorm2d
from .load_policy import LoadPolicy
from .naming import ParamPosition, parse_param_name
from .stage_selection import STAGE_NAMES, select_stages, stage_names

__all__ = ['ACTIVATIONS', 'ARCHS', 'ArchSpec', 'Block', 'ConvNeXtV2', 'ConvNeXtV2Classifier', 'DropPath', 'GRN',
           'LayerNorm2d', 'LoadPolicy', 'ParamPosition', 'STAGE_NAMES', 'parse_param_name', 'resolve_arch',
           'select_stages', 'stage_names']
