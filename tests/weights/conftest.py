"""Random models and writers of every supported checkpoint layout, for the weight-loading tests.

The writers build each format's key layout from our canonical state dict independently of the
converter's tables (explicit per-key code, the inverse shape transforms written as index loops), so a
wrong table entry cannot be mirrored by a wrong writer.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from convnextv2_dense.models import ARCHS, STAGE_NAMES, ConvNeXtV2, ConvNeXtV2Classifier

ALL_STAGES = list(STAGE_NAMES)


class HistoryBuffer:
    """Stands for mmengine's HistoryBuffer: a non-tensor object a weights-only unpickler refuses."""

    def __init__(self) -> None:
        self.values = [1.0, 2.0]


def split_block_key(key: str) -> tuple[int, int, str]:
    """``'stages.1.2.pwconv1.weight'`` -> ``(1, 2, 'pwconv1.weight')``."""
    _, i, j, rest = key.split('.', 3)
    return int(i), int(j), rest


def sparse_dense_kernel(w: torch.Tensor) -> torch.Tensor:
    """(out, in, k, k) -> MinkowskiEngine (k*k, in, out), offsets with the first spatial axis fastest."""
    c_out, c_in, k, _ = w.shape
    kernel = torch.empty(k * k, c_in, c_out)
    for a in range(k):
        for b in range(k):
            kernel[b * k + a] = w[:, :, a, b].T
    return kernel


def sparse_depthwise_kernel(w: torch.Tensor) -> torch.Tensor:
    """(C, 1, k, k) -> MinkowskiEngine depthwise (k*k, C)."""
    c, _, k, _ = w.shape
    kernel = torch.empty(k * k, c)
    for a in range(k):
        for b in range(k):
            kernel[b * k + a] = w[:, 0, a, b]
    return kernel


def to_official(sd: dict) -> dict:
    body = {k: (v.reshape(1, 1, 1, -1) if '.grn.' in k else v) for k, v in sd.items()
            if not k.startswith('out_norms.')}
    return {'model': body}


def to_fcmae(sd: dict) -> dict:
    out = {}
    for key, v in sd.items():
        if key.startswith('downsample_layers.0.'):
            out['encoder.' + key] = v
        elif key.startswith('downsample_layers.'):
            _, i, part, name = key.split('.')
            if part == '0':
                out[f'encoder.downsample_layers.{i}.0.ln.{name}'] = v
            elif name == 'weight':
                out[f'encoder.downsample_layers.{i}.1.kernel'] = sparse_dense_kernel(v)
            else:
                out[f'encoder.downsample_layers.{i}.1.bias'] = v.reshape(1, -1)
        elif key.startswith('stages.'):
            i, j, rest = split_block_key(key)
            base = f'encoder.stages.{i}.{j}'
            module, name = rest.split('.')
            if module == 'dwconv':
                out[f'{base}.dwconv.' + ('kernel' if name == 'weight' else 'bias')] = (
                    sparse_depthwise_kernel(v) if name == 'weight' else v.reshape(1, -1))
            elif module == 'norm':
                out[f'{base}.norm.ln.{name}'] = v
            elif module in ('pwconv1', 'pwconv2'):
                out[f'{base}.{module}.linear.{name}'] = v
            else:
                out[f'{base}.grn.{name}'] = v.reshape(1, -1)
    c = sd['stages.3.0.dwconv.weight'].shape[0]
    out.update({'proj.weight': torch.randn(16, c, 1, 1), 'proj.bias': torch.randn(16),
                'mask_token': torch.randn(1, 16, 1, 1), 'decoder.0.dwconv.weight': torch.randn(16, 1, 7, 7),
                'decoder.0.grn.gamma': torch.randn(1, 1, 1, 64), 'pred.weight': torch.randn(3072, 16, 1, 1),
                'pred.bias': torch.randn(3072)})
    return {'model': out, 'epoch': 799, 'args': argparse.Namespace(model='convnextv2_atto', mask_ratio=0.6)}


def to_timm(sd: dict, conv_mlp: bool) -> dict:
    names = {'dwconv': 'conv_dw', 'norm': 'norm', 'pwconv1': 'mlp.fc1', 'pwconv2': 'mlp.fc2'}
    out = {}
    for key, v in sd.items():
        if key.startswith('downsample_layers.0.'):
            out['stem.' + key[len('downsample_layers.0.'):]] = v
        elif key.startswith('downsample_layers.'):
            _, i, rest = key.split('.', 2)
            out[f'stages.{i}.downsample.{rest}'] = v
        elif key.startswith('stages.'):
            i, j, rest = split_block_key(key)
            module, name = rest.split('.')
            if module == 'grn':
                out[f'stages.{i}.blocks.{j}.mlp.grn.' + {'gamma': 'weight', 'beta': 'bias'}[name]] = v
            else:
                if conv_mlp and module.startswith('pwconv') and name == 'weight':
                    v = v[:, :, None, None]
                out[f'stages.{i}.blocks.{j}.{names[module]}.{name}'] = v
        elif key.startswith(('norm.', 'head.')):
            out[('head.norm.' if key.startswith('norm.') else 'head.fc.') + key.split('.')[1]] = v
    return out


def to_mmpretrain(sd: dict, dense: bool) -> dict:
    names = {'dwconv': 'depthwise_conv', 'norm': 'norm', 'pwconv1': 'pointwise_conv1',
             'pwconv2': 'pointwise_conv2', 'grn': 'grn'}
    out = {}
    for key, v in sd.items():
        if key.startswith('downsample_layers.'):
            out['backbone.' + key] = v
        elif key.startswith('stages.'):
            i, j, rest = split_block_key(key)
            module, name = rest.split('.')
            out[f'backbone.stages.{i}.{j}.{names[module]}.{name}'] = v
        elif key.startswith('out_norms.stage') and dense:
            stage, name = key.split('.')[1:]
            out[f'backbone.norm{int(stage[-1]) - 1}.{name}'] = v
        elif key.startswith('norm.') and not dense:
            out['backbone.norm3.' + key.split('.')[1]] = v
        elif key.startswith('head.') and not dense:
            out['head.fc.' + key.split('.')[1]] = v
    if dense:
        out['neck.lateral_convs.0.conv.weight'] = torch.randn(8, 4, 1, 1)
        out['decode_head.conv_seg.weight'] = torch.randn(3, 8, 1, 1)
    return {'meta': {'mmpretrain_version': '1.2.0', 'epoch': 300}, 'state_dict': out}


def to_hf(sd: dict, kind: str) -> dict:
    """``kind``: 'classifier' (ConvNextV2ForImageClassification), 'model' or 'backbone'."""
    prefix = 'convnextv2.' if kind == 'classifier' else ''
    block = {'dwconv': 'dwconv', 'norm': 'layernorm', 'pwconv1': 'pwconv1', 'pwconv2': 'pwconv2'}
    out = {}
    for key, v in sd.items():
        if key.startswith('downsample_layers.0.'):
            part, name = key.split('.')[2:]
            out[prefix + ('embeddings.patch_embeddings.' if part == '0' else 'embeddings.layernorm.') + name] = v
        elif key.startswith('downsample_layers.'):
            _, i, part, name = key.split('.')
            out[f'{prefix}encoder.stages.{i}.downsampling_layer.{part}.{name}'] = v
        elif key.startswith('stages.'):
            i, j, rest = split_block_key(key)
            module, name = rest.split('.')
            base = f'{prefix}encoder.stages.{i}.layers.{j}'
            if module == 'grn':
                out[f'{base}.grn.' + {'gamma': 'weight', 'beta': 'bias'}[name]] = v.reshape(1, 1, 1, -1)
            else:
                out[f'{base}.{block[module]}.{name}'] = v
        elif key.startswith('norm.') and kind != 'backbone':
            out[prefix + 'layernorm.' + key.split('.')[1]] = v
        elif key.startswith('head.') and kind == 'classifier':
            out['classifier.' + key.split('.')[1]] = v
        elif key.startswith('out_norms.') and kind == 'backbone':
            out['hidden_states_norms.' + key[len('out_norms.'):]] = v
    return out


def hf_config(arch: str = 'atto', **fields) -> dict:
    """The architecture fields an HF ``config.json`` of ``arch`` holds (HF writes them all)."""
    spec = ARCHS[arch]
    return {'model_type': 'convnextv2', 'depths': list(spec.depths), 'hidden_sizes': list(spec.dims),
            'num_stages': len(spec.depths), **fields}


def write_hf_folder(folder: Path, tensors: dict, layer_norm_eps: float = 1e-12, arch: str = 'atto') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / 'model.safetensors'),
              metadata={'format': 'pt'})
    (folder / 'config.json').write_text(json.dumps(hf_config(arch, layer_norm_eps=layer_norm_eps)))
    return folder


def to_hf_tf(sd: dict, kind: str) -> dict:
    """HF TF variable names (without the model's name) -> tensors in TF layout; ``kind``: 'classifier' or 'model'.

    Layout from HF's ``modeling_tf_convnextv2.py``: Keras Conv2D kernels are (kh, kw, in / groups, out)
    (the depthwise conv is ``Conv2D(groups=C)``: (7, 7, 1, C)), Dense kernels (in, out), LayerNorm
    parameters gamma / beta, GRN weight / bias (1, 1, 1, 4C).
    """
    def conv(w):
        return torch.einsum('oihw->hwio', w)

    def dense(w):
        return torch.einsum('oi->io', w)

    norm = {'weight': 'gamma', 'bias': 'beta'}
    out = {}
    for key, v in sd.items():
        name = key.rsplit('.', 1)[1]
        if key.startswith('downsample_layers.'):
            _, i, part, _ = key.split('.')
            is_norm = part == ('1' if i == '0' else '0')  # the stem is conv then norm, downsamplers the reverse
            if i == '0':
                layer = 'convnextv2/embeddings/' + ('layernorm' if is_norm else 'patch_embeddings')
            else:
                layer = f'convnextv2/encoder/stages.{i}/downsampling_layer.' + ('0' if is_norm else '1')
            if is_norm:
                out[f'{layer}/{norm[name]}:0'] = v
            else:
                out[f'{layer}/' + ('kernel:0' if name == 'weight' else 'bias:0')] = conv(v) if name == 'weight' else v
        elif key.startswith('stages.'):
            i, j, rest = split_block_key(key)
            module = rest.split('.')[0]
            base = f'convnextv2/encoder/stages.{i}/layers.{j}'
            if module == 'grn':
                out[f'{base}/grn/' + {'gamma': 'weight', 'beta': 'bias'}[name] + ':0'] = v.reshape(1, 1, 1, -1)
            elif module == 'norm':
                out[f'{base}/layernorm/{norm[name]}:0'] = v
            elif name == 'bias':
                out[f'{base}/{module}/bias:0'] = v
            else:
                out[f'{base}/{module}/kernel:0'] = conv(v) if module == 'dwconv' else dense(v)
        elif key.startswith('norm.'):
            out[f'convnextv2/layernorm/{norm[name]}:0'] = v
        elif key.startswith('head.') and kind == 'classifier':
            out['classifier/' + ('kernel:0' if name == 'weight' else 'bias:0')] = dense(v) if name == 'weight' else v
    return out


TF_MODEL_NAMES = {'classifier': 'tf_conv_next_v2_for_image_classification', 'model': 'tf_conv_next_v2_model'}


def write_keras_h5(path: Path, tensors: dict, kind: str, chunked: bool = False) -> Path:
    """Write ``to_hf_tf``'s tensors as Keras 2 ``save_weights`` does (HF's ``tf_model.h5``).

    Root attribute ``layer_names`` (top-level layers); per layer a group whose ``weight_names`` lists the
    full TF variable names (model name first), each a dataset at that path inside the group. ``chunked``
    splits ``weight_names`` into ``weight_names0``/``1`` as Keras does past 64 KB.
    """
    import h5py
    model = TF_MODEL_NAMES[kind]
    layers = ['convnextv2', 'classifier'] if kind == 'classifier' else ['convnextv2']
    with h5py.File(path, 'w') as f:
        f.attrs['layer_names'] = [name.encode('utf8') for name in layers]
        f.attrs['backend'] = b'tensorflow'
        f.attrs['keras_version'] = b'2.15.0'
        for layer in layers:
            group = f.create_group(layer)
            names = [f'{model}/{k}' for k in tensors if k.split('/')[0] == layer]
            encoded = [n.encode('utf8') for n in names]
            if chunked:
                group.attrs['weight_names0'], group.attrs['weight_names1'] = encoded[:5], encoded[5:]
            else:
                group.attrs['weight_names'] = encoded
            for name in names:
                group.create_dataset(name, data=tensors[name.split('/', 1)[1]].numpy())
    return path


def write_hf_tf_shards(folder: Path, tensors: dict, shards: int = 2) -> Path:
    """HF's sharded TF layout: ``tf_model-0000k-of-0000n.h5`` (datasets named without the model's name,
    listed in the root ``layer_names``) and ``tf_model.h5.index.json``."""
    import h5py
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    weight_map = {}
    for k in range(shards):
        file = f'tf_model-{k + 1:05d}-of-{shards:05d}.h5'
        part = names[k::shards]
        with h5py.File(folder / file, 'w') as f:
            for name in part:
                f.create_dataset(name, data=tensors[name].numpy())
                weight_map[name] = file
            f.attrs['layer_names'] = [name.encode('utf8') for name in part]
    (folder / 'tf_model.h5.index.json').write_text(json.dumps({'metadata': {}, 'weight_map': weight_map}))
    return folder


def to_openmmlab(sd: dict) -> dict:
    state = {'backbone.' + k: v for k, v in sd.items()}
    state.update({'neck.fpn_convs.0.conv.weight': torch.randn(8, 8, 3, 3),
                  'rpn_head.rpn_conv.weight': torch.randn(8, 8, 3, 3),
                  'roi_head.bbox_head.fc_cls.weight': torch.randn(81, 16),
                  'data_preprocessor.mean': torch.randn(3, 1, 1)})
    return {'meta': {'mmengine_version': '0.10.7', 'epoch': 36, 'dataset_meta': {'classes': ('a', 'b')}},
            'state_dict': state,
            'message_hub': {'log_scalars': {'train/loss': HistoryBuffer()}},
            'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-4, 'params': [0, 1]}]}}


@pytest.fixture(scope='session')
def writers() -> SimpleNamespace:
    return SimpleNamespace(official=to_official, fcmae=to_fcmae, timm=to_timm, mmpretrain=to_mmpretrain,
                           hf=to_hf, hf_folder=write_hf_folder, hf_config=hf_config, openmmlab=to_openmmlab,
                           hf_tf=to_hf_tf, keras_h5=write_keras_h5, hf_tf_shards=write_hf_tf_shards)


@pytest.fixture(scope='session')
def atto_classifier(randomize) -> ConvNeXtV2Classifier:
    return randomize(ConvNeXtV2Classifier('atto', num_classes=10), seed=1)


@pytest.fixture(scope='session')
def atto_backbone(randomize) -> ConvNeXtV2:
    return randomize(ConvNeXtV2('atto', out_features=list(STAGE_NAMES)), seed=2)


@pytest.fixture(scope='session')
def image() -> torch.Tensor:
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
