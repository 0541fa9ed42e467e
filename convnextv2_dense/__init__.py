"""convnextv2_dense: ConvNeXt V2 for detection and segmentation with OpenMMLab.

``from convnextv2_dense import ConvNeXtV2`` needs only torch. Importing the package also registers the
OpenMMLab adapters (backbone, layer-decay optimizer constructor, checkpoint safety) in every mm
package that is installed; without them the import still works.
"""
from .models import ARCHS, ConvNeXtV2, ConvNeXtV2Classifier

__version__ = '0.1.0'
__all__ = ['ARCHS', 'ConvNeXtV2', 'ConvNeXtV2Classifier', '__version__']

from .mm import register_all as _register_all  # noqa: E402

_register_all()
