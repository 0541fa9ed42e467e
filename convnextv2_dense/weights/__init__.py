"""Checkpoint reading, format detection, key conversion and strict loading for ConvNeXt V2.

Imports only torch, safetensors and the standard library (``huggingface_hub`` lazily, for hub repo ids;
``h5py`` lazily, for HF's TensorFlow ``tf_model.h5``).

Typical use::

    model = ConvNeXtV2.from_pretrained('convnextv2_tiny_1k_224_ema.pt')   # any supported format
    print(model.load_report)
    save_checkpoint(model, 'tiny.safetensors')
    save_hf_pretrained(model.state_dict(), 'tiny_hf/', model.arch_spec)  # for transformers' from_pretrained
"""
from .arch import describe_arch, infer_arch
from .formats import FORMAT_NAMES, FORMATS, KeyFormat, Rule, canonical_key, detect_format, to_canonical
from .hf_export import HFExport, save_hf_pretrained
from .io import CheckpointError, RawCheckpoint, cache_dir, download, read_checkpoint
from .loading import (CanonicalCheckpoint, LoadReport, load_canonical, load_pretrained, load_weights,
                      read_canonical, save_checkpoint, save_state_dict)

__all__ = ['CanonicalCheckpoint', 'CheckpointError', 'FORMATS', 'FORMAT_NAMES', 'HFExport', 'KeyFormat', 'LoadReport',
           'RawCheckpoint', 'Rule', 'cache_dir', 'canonical_key', 'describe_arch', 'detect_format', 'download',
           'infer_arch', 'load_canonical', 'load_pretrained', 'load_weights', 'read_canonical', 'read_checkpoint',
           'save_checkpoint', 'save_hf_pretrained', 'save_state_dict', 'to_canonical']
