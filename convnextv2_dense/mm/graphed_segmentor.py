"""``GraphedEncoderDecoder``: mmseg's ``EncoderDecoder`` whose training step replays a CUDA graph.

Same modules, parameters, losses, logs and checkpoints as ``EncoderDecoder`` (it is a subclass; only
``train_step`` differs, see :mod:`.graph_step`). ``cuda_graph=False`` gives the stock step back;
``cuda_graph=dict(warmup_iters=N)`` sets the eager iterations before the capture. Inference, testing and
the CPU run exactly as ``EncoderDecoder``. Multi-process training keeps the graph step through the configs'
DDP wrapper, ``GraphedDistributedDataParallel`` (:mod:`.graph_ddp`); mmengine's own wrapper runs its eager step.
"""
from __future__ import annotations

import functools
from typing import Any

from .graph_step import GraphedTrainStep


@functools.cache
def graphed_encoder_decoder_class() -> type:
    """The class, made on first use (mmseg is imported only then)."""
    from mmseg.models.segmentors import EncoderDecoder

    class GraphedEncoderDecoder(EncoderDecoder):
        """mmseg's ``EncoderDecoder`` with a CUDA-graph training step (module docstring of
        ``convnextv2_dense.mm.graphed_segmentor``).

        Args:
            cuda_graph (bool | dict): ``False``: the stock step; ``True`` or a dict of
                :class:`GraphedTrainStep` arguments: the graphed step. Defaults to True.
        """

        def __init__(self, *args: Any, cuda_graph: bool | dict = True, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if not isinstance(cuda_graph, (bool, dict)):
                raise TypeError(f'cuda_graph must be a bool or a dict of GraphedTrainStep arguments, got '
                                f'{cuda_graph!r}')
            options = cuda_graph if isinstance(cuda_graph, dict) else {}
            self.graph_step = GraphedTrainStep(**options) if cuda_graph is not False else None

        def train_step(self, data: Any, optim_wrapper: Any) -> dict:
            if self.graph_step is None:
                return super().train_step(data, optim_wrapper)
            return self.graph_step(self, data, optim_wrapper)

    return GraphedEncoderDecoder


def build_graphed_encoder_decoder(**kwargs: Any) -> Any:
    """Registry builder of ``GraphedEncoderDecoder`` (mmseg's MODELS)."""
    return graphed_encoder_decoder_class()(**kwargs)
