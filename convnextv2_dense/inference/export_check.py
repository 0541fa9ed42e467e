"""Writing exported models and the parity gate that decides whether they are kept.

An exported file is run next to the eager PyTorch module it came from, on a real image and on random
inputs (other batch sizes and image sizes, where the graph is dynamic). For every output the gate
prints the largest absolute error and the relative error ``max|exported - eager| / max|eager|``; past
the tolerance the file is deleted and :class:`ParityError` raised. ONNX files are run with
onnxruntime, ``.pt2`` files (``torch.export``) with PyTorch.
"""
from __future__ import annotations

import os
import os.path as osp
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 2e-2


class ParityError(RuntimeError):
    """An exported model disagrees with eager PyTorch (or cannot be run); its file has been removed."""


@dataclass(frozen=True)
class Check:
    """The error of one output on one input.

    Args:
        input_name (str): Which input (``'image 128x128'``, ``'random 2x3x96x160'``).
        output_name (str): Which output.
        max_abs (float): Largest absolute difference.
        rel (float): ``max_abs / max|reference|``.
    """

    input_name: str
    output_name: str
    max_abs: float
    rel: float

    def line(self, tolerance: float) -> str:
        verdict = 'ok' if self.rel <= tolerance else 'FAIL'
        return (f'  {self.input_name:<24} {self.output_name:<12} max-abs {self.max_abs:.3e}  '
                f'rel {self.rel:.3e}  {verdict}')


def compare(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray], output_names: Sequence[str],
            input_name: str) -> list[Check]:
    """Per-output errors of ``actual`` against ``reference`` (shapes must agree)."""
    if len(reference) != len(actual):
        raise ParityError(f'{input_name}: the exported model returned {len(actual)} outputs, eager {len(reference)}')
    checks = []
    for name, ref, out in zip(output_names, reference, actual):
        ref, out = np.asarray(ref, dtype=np.float64), np.asarray(out, dtype=np.float64)
        if ref.shape != out.shape:
            raise ParityError(f'{input_name}: output {name} has shape {out.shape} exported, {ref.shape} eager')
        if not np.isfinite(out).all():
            checks.append(Check(input_name, name, float('inf'), float('inf')))
            continue
        max_abs = float(np.abs(ref - out).max()) if ref.size else 0.0
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        checks.append(Check(input_name, name, max_abs, max_abs / max(scale, 1e-12)))
    return checks


def eager_outputs(module: nn.Module, image: np.ndarray) -> list[np.ndarray]:
    """Run ``module`` on a float32 batch in PyTorch and return its outputs as fp32 numpy arrays."""
    with torch.no_grad():
        out = module(torch.from_numpy(image))
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.float().numpy() for o in out]


def write_onnx(module: nn.Module, example: torch.Tensor, path: str, output_names: Sequence[str],
               dynamic: Sequence[str], opset: int = 18) -> None:
    """Export with PyTorch's TorchScript-based ONNX exporter (needs no package beyond torch).

    Args:
        module (nn.Module): What to export, in eval mode.
        example (torch.Tensor): An input batch.
        path (str): The ``.onnx`` file.
        output_names (Sequence[str]): One name per output.
        dynamic (Sequence[str]): Which of ``'batch'``, ``'height'``, ``'width'`` stay free.
        opset (int): ONNX opset; 17 or later exports LayerNorm as one ``LayerNormalization`` op, whose
            statistics are fp32 in fp16 models. Defaults to 18.
    """
    import warnings
    axes = {'batch': 0, 'height': 2, 'width': 3}
    dynamic_axes = {'image': {axes[d]: d for d in dynamic}}
    for name in output_names:
        dynamic_axes[name] = {0: 'batch'} if 'batch' in dynamic else {}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(module, (example,), path, dynamo=False, input_names=['image'],
                          output_names=list(output_names), dynamic_axes=dynamic_axes, opset_version=opset)


def onnx_runner(path: str, providers: Sequence[str] = ('CPUExecutionProvider',)) -> Callable[[np.ndarray], list]:
    """An onnxruntime session on ``path``, as a function of the input batch."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=list(providers))
    input_type = session.get_inputs()[0].type
    dtype = np.float16 if 'float16' in input_type else np.float32
    return lambda image: session.run(None, {session.get_inputs()[0].name: image.astype(dtype)})


def write_pt2(module: nn.Module, example: torch.Tensor, path: str, dynamic: Sequence[str]) -> None:
    """``torch.export`` the module with free batch and/or image size and save the program.

    Args:
        module (nn.Module): What to export, in eval mode.
        example (torch.Tensor): An input batch.
        path (str): The ``.pt2`` file.
        dynamic (Sequence[str]): Which of ``'batch'``, ``'height'``, ``'width'`` stay free.
    """
    from torch.export import Dim
    dims = {'batch': 0, 'height': 2, 'width': 3}
    spec = {dims[d]: Dim.AUTO for d in dynamic}
    program = torch.export.export(module, (example,), dynamic_shapes=({**spec},) if spec else None, strict=False)
    torch.export.save(program, path)


def pt2_runner(path: str) -> Callable[[np.ndarray], list]:
    """The saved ``torch.export`` program at ``path``, as a function of the input batch."""
    program = torch.export.load(path).module()
    dtype = next((b.dtype for b in program.buffers() if b.is_floating_point()), torch.float32)

    def run(image: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = program(torch.from_numpy(image).to(dtype))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o.float().numpy() for o in out]
    return run


def gate(path: str, run_exported: Callable[[np.ndarray], list], reference: nn.Module,
         inputs: Sequence[tuple[str, np.ndarray]], output_names: Sequence[str], tolerance: float,
         log: Callable[[str], None] = print) -> list[Check]:
    """Compare an exported file with eager PyTorch on every input; remove it and raise past ``tolerance``.

    Args:
        path (str): The exported file (removed on failure, with its ``.data`` side file if any).
        run_exported (Callable): Runs the exported model on a float32 numpy batch.
        reference (nn.Module): The eager fp32 module.
        inputs (Sequence[tuple[str, np.ndarray]]): Named float32 NCHW batches.
        output_names (Sequence[str]): Output names, for the report.
        tolerance (float): Largest relative error allowed.
        log (Callable): Where the per-output lines go. Defaults to print.

    Returns:
        list[Check]: One per output and input.
    """
    checks: list[Check] = []
    try:
        for input_name, image in inputs:
            checks += compare(eager_outputs(reference, image), run_exported(image), output_names, input_name)
    except ParityError as err:
        remove_export(path)
        raise ParityError(f'{err}; removed {path}') from None
    except Exception as err:  # the runtime refused an input the graph should take
        remove_export(path)
        raise ParityError(f'running {path} failed: {type(err).__name__}: {err}; removed it') from None
    for check in checks:
        log(check.line(tolerance))
    worst = max(checks, key=lambda c: c.rel)
    if not worst.rel <= tolerance:
        remove_export(path)
        raise ParityError(f'{path} disagrees with eager PyTorch: relative error {worst.rel:.3e} on output '
                          f'{worst.output_name} ({worst.input_name}) is past the tolerance {tolerance:.0e}; '
                          'removed it')
    return checks


def remove_export(path: str) -> None:
    """Delete an exported file and the external-data file an ONNX export may have written beside it."""
    for file in (path, f'{path}.data'):
        if osp.exists(file):
            os.remove(file)


def low_precision_reductions(path: str) -> list[str]:
    """Reduction nodes of an ONNX graph whose input is not fp32 (empty for a safe fp16 export).

    Every ``Reduce*`` node must read fp32 (GRN's statistics); ``LayerNormalization`` must keep its default
    fp32 ``stash_type``.

    Args:
        path (str): An ONNX file.

    Returns:
        list[str]: ``'ReduceL2 node_name reads float16'`` lines.
    """
    import onnx
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input,
                                                            *model.graph.output)}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    bad = []
    for node in model.graph.node:
        if node.op_type.startswith('Reduce'):
            elem = types.get(node.input[0])
            if elem != onnx.TensorProto.FLOAT:
                name = onnx.TensorProto.DataType.Name(elem) if elem else 'an unknown type'
                bad.append(f'{node.op_type} {node.name} reads {name.lower()}')
        elif node.op_type == 'LayerNormalization':
            stash = next((a.i for a in node.attribute if a.name == 'stash_type'), 1)
            if stash != onnx.TensorProto.FLOAT:
                bad.append(f'LayerNormalization {node.name} has stash_type {stash} (not fp32)')
    return bad
