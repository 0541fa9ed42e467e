"""Sources (files, folders, URLs, hub ids), wrappers, and safe reading."""
from __future__ import annotations

import argparse
import http.server
import json
import os
import sys
import threading
from functools import partial

import pytest
import torch
from safetensors.torch import save_file

from convnextv2_dense.models import ConvNeXtV2, ConvNeXtV2Classifier
from convnextv2_dense.weights import CheckpointError, read_checkpoint


class NotATensor:
    """Any class a weights-only unpickler does not know."""

    def __init__(self) -> None:
        self.value = 3


class RunsCode:
    """Unpickling this would create a file: the loader must never run it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_pickled_code_is_never_run(tmp_path, atto_classifier):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'model': atto_classifier.state_dict(), 'payload': RunsCode(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r'evil\.pth.*posix\.system'):  # torch blocks os entirely
        ConvNeXtV2Classifier.from_pretrained(path)
    assert not marker.exists()


def test_unknown_objects_beside_the_weights_are_made_inert(tmp_path, atto_classifier):
    path = tmp_path / 'train.pth'
    torch.save({'model': atto_classifier.state_dict(), 'args': argparse.Namespace(lr=1.0),
                'extra': NotATensor()}, path)
    model = ConvNeXtV2Classifier.from_pretrained(path)
    assert model.load_report.format == 'convnextv2_dense'


def test_ddp_module_prefix_and_nested_wrappers(tmp_path, atto_classifier):
    state = {'module.' + k: v for k, v in atto_classifier.state_dict().items()}
    path = tmp_path / 'ddp.pth'
    torch.save({'model': {'module': state}, 'epoch': 3}, path)
    raw = read_checkpoint(path)
    assert set(raw.state_dict) == set(atto_classifier.state_dict())
    ConvNeXtV2Classifier.from_pretrained(path)


def test_sharded_hf_folder(tmp_path, writers, atto_classifier):
    tensors = writers.hf(atto_classifier.state_dict(), 'classifier')
    keys = sorted(tensors)
    shards = {'model-00001-of-00002.safetensors': keys[::2], 'model-00002-of-00002.safetensors': keys[1::2]}
    for name, part in shards.items():
        save_file({k: tensors[k].contiguous() for k in part}, str(tmp_path / name))
    weight_map = {k: name for name, part in shards.items() for k in part}
    (tmp_path / 'model.safetensors.index.json').write_text(json.dumps({'weight_map': weight_map}))
    (tmp_path / 'config.json').write_text(json.dumps(writers.hf_config('atto', layer_norm_eps=1e-12)))
    model = ConvNeXtV2Classifier.from_pretrained(tmp_path)
    assert model.load_report.format == 'hf' and len(model.load_report.loaded) == len(keys)


def test_folder_without_weights(tmp_path):
    (tmp_path / 'config.json').write_text('{}')
    with pytest.raises(CheckpointError, match='model.safetensors'):
        ConvNeXtV2.from_pretrained(tmp_path)


def test_hub_repo_id_offline_gives_a_clear_error(tmp_path, monkeypatch):
    pytest.importorskip('huggingface_hub')
    import huggingface_hub.constants
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HOME', str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'hub'))
    with pytest.raises(CheckpointError, match=r"facebook/convnextv2-atto-1k-224.*(offline|HF_HUB_OFFLINE)"):
        ConvNeXtV2.from_pretrained('facebook/convnextv2-atto-1k-224')


def test_hub_repo_id_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, 'huggingface_hub', None)
    with pytest.raises(CheckpointError, match='install huggingface_hub'):
        ConvNeXtV2.from_pretrained('facebook/convnextv2-atto-1k-224')


@pytest.fixture()
def http_server(tmp_path):
    """Serve ``tmp_path / 'served'`` on 127.0.0.1; yields (base URL, list of requested paths)."""
    served = tmp_path / 'served'
    served.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's API
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}', served, requests
    finally:
        server.shutdown()
        server.server_close()


def test_url_is_downloaded_once_into_the_cache(tmp_path, monkeypatch, http_server, writers, atto_classifier):
    base, served, requests = http_server
    torch.save(writers.official(atto_classifier.state_dict()), served / 'convnextv2_atto_1k_224_ema.pt')
    cache = tmp_path / 'cache'
    monkeypatch.setenv('CONVNEXTV2_CACHE', str(cache))
    url = f'{base}/convnextv2_atto_1k_224_ema.pt'
    first = ConvNeXtV2Classifier.from_pretrained(url)
    second = ConvNeXtV2Classifier.from_pretrained(url)
    assert requests == ['/convnextv2_atto_1k_224_ema.pt']
    assert first.load_report.format == 'official' and first.load_report.source == url
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].name.endswith('_convnextv2_atto_1k_224_ema.pt')
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def test_url_not_found_is_an_error_and_leaves_no_file(tmp_path, monkeypatch, http_server):
    base, _, _ = http_server
    monkeypatch.setenv('CONVNEXTV2_CACHE', str(tmp_path / 'cache'))
    with pytest.raises(CheckpointError, match='missing.pt'):
        ConvNeXtV2.from_pretrained(f'{base}/missing.pt')
    assert not any((tmp_path / 'cache').iterdir())
