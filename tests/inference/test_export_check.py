"""The parity gate and the fp16 graph check, on a tiny random backbone (no mm needed)."""
import numpy as np
import pytest
import torch

from convnextv2_dense.inference.export_check import (ParityError, gate, low_precision_reductions, onnx_runner,
                                                     write_onnx)
from convnextv2_dense.inference.export_modules import BackboneExport, make_exportable
from convnextv2_dense.models import ConvNeXtV2

pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')


def _model(seed=0):
    torch.manual_seed(seed)
    model = BackboneExport(ConvNeXtV2(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if '.grn.' in name:
                p.normal_(0, 0.5)  # a zero GRN is an identity and would hide a broken export
    return model.eval()


def _inputs():
    rng = np.random.default_rng(0)
    return [('random 2x3x64x64', rng.uniform(0, 255, (2, 3, 64, 64)).astype(np.float32)),
            ('random 1x3x96x32', rng.uniform(0, 255, (1, 3, 96, 32)).astype(np.float32))]


def test_gate_passes_a_faithful_export(tmp_path):
    model = _model()
    path = str(tmp_path / 'ok.onnx')
    write_onnx(model, torch.zeros(1, 3, 64, 64), path, model.output_names, ('batch', 'height', 'width'))
    lines = []
    checks = gate(path, onnx_runner(path), model, _inputs(), model.output_names, 1e-4, log=lines.append)
    assert len(checks) == 8 and all(c.rel <= 1e-4 for c in checks) and len(lines) == 8
    assert (tmp_path / 'ok.onnx').is_file()


def test_gate_refuses_and_removes_a_wrong_export(tmp_path):
    exported, reference = _model(), _model()
    with torch.no_grad():
        exported.backbone.stages[2][0].grn.gamma.mul_(1.5)
    path = str(tmp_path / 'broken.onnx')
    write_onnx(exported, torch.zeros(1, 3, 64, 64), path, exported.output_names, ('batch', 'height', 'width'))
    with pytest.raises(ParityError, match=r'relative error .* on output stage\d .* past the tolerance 1e-04; removed'):
        gate(path, onnx_runner(path), reference, _inputs(), reference.output_names, 1e-4, log=lambda line: None)
    assert not (tmp_path / 'broken.onnx').exists()


def test_gate_refuses_a_graph_with_a_frozen_size(tmp_path):
    model = _model()
    path = str(tmp_path / 'static.onnx')
    write_onnx(model, torch.zeros(1, 3, 64, 64), path, model.output_names, ())
    with pytest.raises(ParityError, match='(?s)running .*static.onnx failed: InvalidArgument.*removed it'):
        gate(path, onnx_runner(path), model, _inputs(), model.output_names, 1e-4)
    assert not (tmp_path / 'static.onnx').exists()


def test_fp16_export_keeps_grn_reductions_in_fp32(tmp_path):
    naive = _model().half()
    path = str(tmp_path / 'naive16.onnx')
    write_onnx(naive, torch.zeros(1, 3, 64, 64, dtype=torch.float16), path, naive.output_names, ('batch',))
    assert any(line.startswith('ReduceL2') and 'float16' in line for line in low_precision_reductions(path))

    safe = _model()
    make_exportable(safe)
    safe = safe.half()
    path = str(tmp_path / 'safe16.onnx')
    write_onnx(safe, torch.zeros(1, 3, 64, 64, dtype=torch.float16), path, safe.output_names, ('batch',))
    assert low_precision_reductions(path) == []
