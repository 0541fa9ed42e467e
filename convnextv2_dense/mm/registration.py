"""Register our classes in the registries of the mm packages, when and only when those are imported.

``import convnextv2_dense`` must stay a torch-only import for plain PyTorch users, yet a config's
``custom_imports=dict(imports=['convnextv2_dense'])`` must make ``type='ConvNeXtV2'`` resolve under
mmdet, mmseg and mmpretrain. So registration runs at once for mm packages already imported and, for
the others, right after their ``registry`` module is first imported (a post-import hook).
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Callable
from types import ModuleType

MM_PACKAGES: tuple[str, ...] = ('mmdet', 'mmseg', 'mmpretrain')


def _register(registry_module: ModuleType) -> None:
    """Put the backbone, the layer-decay constructor and our hooks into one mm package's registries (and, in
    mmseg's, the decode heads of :mod:`.fast_heads`, the segmentor of :mod:`.graphed_segmentor` and its DDP
    wrapper of :mod:`.graph_ddp`; in mmdet's, the assigner, sampler, RPN head, RoI extractor and mask head of :mod:`.fast_det` and the
    box coder, anchor generator and IoU calculator of :mod:`.fast_boxes`).

    Registration adds names only: checkpoint reading is not changed here (see ``checkpoint_safety``).
    """
    from mmengine.fileio import register_backend

    from ..models import ConvNeXtV2
    from .checkpoint_saving import ATOMIC_BACKEND, AtomicLocalBackend, SafeCheckpointHook
    from .gc_freeze import GcFreezeHook
    from .guards import CheckpointMatchHook, NonFiniteLossHook
    from .optimizer import ConvNeXtV2LayerDecayOptimizerConstructor

    registry_module.MODELS.register_module('ConvNeXtV2', module=ConvNeXtV2, force=True)
    registry_module.OPTIM_WRAPPER_CONSTRUCTORS.register_module(
        'ConvNeXtV2LayerDecayOptimizerConstructor', module=ConvNeXtV2LayerDecayOptimizerConstructor, force=True)
    if registry_module.__name__ == 'mmseg.registry':  # builders: mmseg's heads are imported on first build
        from .fast_heads import build_fcn_head_fast, build_uper_head_fast
        registry_module.MODELS.register_module('UPerHeadFast', module=build_uper_head_fast, force=True)
        registry_module.MODELS.register_module('FCNHeadFast', module=build_fcn_head_fast, force=True)
        from .graphed_segmentor import build_graphed_encoder_decoder
        registry_module.MODELS.register_module('GraphedEncoderDecoder', module=build_graphed_encoder_decoder,
                                               force=True)
        # its DDP wrapper, in mmengine's root registry: the Runner looks the type up there (``get`` ignores the
        # default scope) and checks that it subclasses DDP, so it is the class itself
        from mmengine.registry import MODEL_WRAPPERS

        from .graph_ddp import graphed_ddp_class
        MODEL_WRAPPERS.register_module('GraphedDistributedDataParallel', module=graphed_ddp_class(), force=True)
    if registry_module.__name__ == 'mmdet.registry':  # builders: mmdet's classes are imported on first build
        from .fast_det import (build_fcn_mask_head_fast, build_mask_rcnn_fast, build_max_iou_assigner_fast,
                               build_random_sampler_fast, build_rpn_head_fast, build_single_roi_extractor_fast)
        registry_module.MODELS.register_module('MaskRCNNFast', module=build_mask_rcnn_fast, force=True)
        registry_module.MODELS.register_module('FCNMaskHeadFast', module=build_fcn_mask_head_fast, force=True)
        registry_module.MODELS.register_module('RPNHeadFast', module=build_rpn_head_fast, force=True)
        from .fast_roi import build_standard_roi_head_fast
        registry_module.MODELS.register_module('StandardRoIHeadFast', module=build_standard_roi_head_fast, force=True)
        registry_module.MODELS.register_module('SingleRoIExtractorFast', module=build_single_roi_extractor_fast,
                                               force=True)
        registry_module.TASK_UTILS.register_module('MaxIoUAssignerFast', module=build_max_iou_assigner_fast,
                                                   force=True)
        registry_module.TASK_UTILS.register_module('RandomSamplerFast', module=build_random_sampler_fast,
                                                   force=True)
        from .fast_boxes import STOCK_TYPES as BOX_VARIANTS
        from .fast_boxes import build_box_variant
        for name in BOX_VARIANTS:
            registry_module.TASK_UTILS.register_module(name, module=build_box_variant(name), force=True)
    for hook in (SafeCheckpointHook, NonFiniteLossHook, CheckpointMatchHook, GcFreezeHook):
        registry_module.HOOKS.register_module(hook.__name__, module=hook, force=True)
    register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)


def _register_safely(registry_module: ModuleType) -> None:
    try:
        _register(registry_module)
    except Exception as err:  # a broken mm install must not break a torch-only import
        warnings.warn(f'convnextv2_dense: could not register with {registry_module.__name__}: {err!r}')


class _CallbackLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, callback: Callable[[ModuleType], None]) -> None:
        self._loader, self._callback = loader, callback

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._callback(module)


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Runs a callback right after a named module has been executed for the first time."""

    def __init__(self) -> None:
        self.callbacks: dict[str, Callable[[ModuleType], None]] = {}
        self._resolving: set[str] = set()

    def find_spec(self, fullname: str, path: object = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.callbacks or fullname in self._resolving:
            return None
        self._resolving.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._resolving.discard(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _CallbackLoader(spec.loader, self.callbacks.pop(fullname))
        return spec


_HOOK = _PostImportHook()


def register_all() -> None:
    """Register now with the mm packages already imported, and later with the others on their import."""
    for package in MM_PACKAGES:
        name = f'{package}.registry'
        if name in sys.modules:
            _register_safely(sys.modules[name])
        else:
            _HOOK.callbacks[name] = _register_safely
    if _HOOK.callbacks and _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
