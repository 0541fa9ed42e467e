"""A training step that replays one CUDA graph of forward, loss and backward: the host cost of a step's
thousands of kernel launches (autograd, the mm modules' Python) is paid once, at capture.

mmengine's ``BaseModel.train_step`` is preprocess, forward in the optimizer wrapper's AMP context,
``parse_losses``, then ``optim_wrapper.update_params`` (backward, step, zero_grad). :class:`GraphedTrainStep`
runs the same steps, except that once a batch signature (the shapes and dtypes of every input and label
tensor) has been trained eagerly ``warmup_iters`` times, forward + loss + backward of that signature are
captured in a CUDA graph and replayed for every later batch of it:

- the preprocessed batch is copied into the graph's static input tensors (labels too), then replayed;
- the gradients land in static tensors, which are handed back to the parameters before the optimizer
  wrapper's own ``step()`` and ``zero_grad()`` run eagerly (loss scaling, clipping, fused AdamW and lr
  schedules work as before: the optimizer is not in the graph);
- the logged values are copies of the graph's outputs, as ``train_step`` returns them.

Same arithmetic, same random streams (dropout and drop path draw new values at every replay). It serves
single-process CUDA training with fixed-shape batches (segmentation crops) and ``accumulative_counts=1``;
anything else (CPU, gradient accumulation, a batch of another shape while the first is still warming up)
runs the eager step, and a capture that fails (a host synchronisation inside the model) turns the graph
off for the run with a warning naming the error. Under DistributedDataParallel, mmengine's wrapper calls
its own train step; ``GraphedDistributedDataParallel`` (:mod:`.graph_ddp`) calls this one with a
:class:`~.graph_ddp.GradientSync`, which keeps the ranks' choices (eager, capture, replay) in step and
averages the gradients after backward.
"""
from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from .graph_ddp import signature_key

if TYPE_CHECKING:
    from .graph_ddp import GradientSync

__all__ = ['GraphedTrainStep', 'batch_signature', 'eager_train_step', 'on_stream']


def eager_train_step(model: Any, data: dict, optim_wrapper: Any, sync: GradientSync | None = None) -> dict:
    """mmengine's ``BaseModel.train_step`` after preprocessing: forward, parse_losses, update_params (with
    ``sync``: the gradients averaged over the ranks between backward and the optimizer step)."""
    with optim_wrapper.optim_context(model):
        losses = model._run_forward(data, mode='loss')
    parsed, log_vars = model.parse_losses(losses)
    if sync is None:
        optim_wrapper.update_params(parsed)
        return log_vars
    optim_wrapper.backward(optim_wrapper.scale_loss(parsed))
    sync.reduce(_trained_params(optim_wrapper))
    if optim_wrapper.should_update():
        optim_wrapper.step()
        optim_wrapper.zero_grad()
    return log_vars


def _trained_params(optim_wrapper: Any) -> list[torch.nn.Parameter]:
    """The optimizer's parameters that take gradients, in its (every rank's same) order."""
    return [p for group in optim_wrapper.param_groups for p in group['params'] if p.requires_grad]


def _sample_tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in the data fields of a data sample (or a list of them), depth first, in field order."""
    from mmengine.structures import BaseDataElement
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, BaseDataElement):
        for _, field in value.items():
            yield from _sample_tensors(field)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _sample_tensors(item)


def batch_signature(data: dict) -> tuple:
    """What a captured graph is specific to: shape, dtype and device of the inputs and of each label tensor."""
    def sig(t: torch.Tensor) -> tuple:
        return tuple(t.shape), t.dtype, t.device
    inputs = data['inputs']
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f'a graphed train step needs the preprocessed inputs as one tensor, got {type(inputs)}')
    samples = data.get('data_samples') or []
    return sig(inputs), len(samples), tuple(sig(t) for t in _sample_tensors(samples))


class CudaGraph:
    """The two operations :class:`GraphedTrainStep` needs of a graph: record a function, replay it."""

    def __init__(self) -> None:
        self.graph = torch.cuda.CUDAGraph()

    def capture(self, body: Callable[[], Any], stream: torch.cuda.Stream | None = None,
                capture_error_mode: str = 'global') -> Any:
        # The blocks the eager warm-up left cached are never used by the graph (it allocates from a pool of
        # its own): give them back before and after, or the step would hold two iterations' worth of memory.
        torch.cuda.empty_cache()
        try:
            with torch.cuda.graph(self.graph, stream=stream, capture_error_mode=capture_error_mode):
                out = body()
        except Exception:
            release_rng_from_failed_capture(stream)
            raise
        torch.cuda.empty_cache()
        return out

    def replay(self) -> None:
        self.graph.replay()


def release_rng_from_failed_capture(stream: torch.cuda.Stream | None = None) -> None:
    """Make the CUDA random generator usable again after a capture that failed.

    A capture marks the default CUDA generator as capturing, and only a capture that ends well unmarks it:
    after a failed one, the next eager dropout or drop path stops with "Offset increment outside graph
    capture encountered unexpectedly" (seen on an H100 when a capture under DDP failed). An empty capture,
    which ends well, clears the mark; its graph is thrown away.
    """
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # "the CUDA graph is empty"
        with torch.cuda.graph(torch.cuda.CUDAGraph(), stream=stream):
            pass
    torch.cuda.empty_cache()


@contextmanager
def on_stream(side: torch.cuda.Stream | None) -> Iterator[None]:
    """Run the body on ``side`` (ordered after the current stream's work, and it after the body's)."""
    if side is None:
        yield
        return
    current = torch.cuda.current_stream(side.device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        yield
    current.wait_stream(side)


class GraphedTrainStep:
    """``train_step`` with forward + loss + backward replayed from a CUDA graph; see the module docstring.

    Args:
        warmup_iters (int): Eager iterations of a batch signature before it is captured (cuDNN autotuning,
            lazy initialisations, ``torch.compile``). Defaults to 3.
        graph_factory (Callable[[], CudaGraph]): Makes the graph. Defaults to :class:`CudaGraph`.
        require_cuda (bool): Use the graph only for CUDA inputs. Defaults to True.
    """

    def __init__(self, warmup_iters: int = 3, graph_factory: Callable[[], Any] = CudaGraph,
                 require_cuda: bool = True) -> None:
        if warmup_iters < 1:
            raise ValueError(f'warmup_iters must be at least 1 (capture needs a warmed-up step), got {warmup_iters}')
        self.warmup_iters = warmup_iters
        self.graph_factory = graph_factory
        self.require_cuda = require_cuda
        self.disabled: str | None = None  # why the graph was turned off for the run
        self._warned: set[str] = set()
        # Warm-up and capture share one side stream: the caching allocator keeps blocks per stream, and
        # autograd wants a parameter's gradient accumulated on the stream that first accumulated it.
        self._stream: torch.cuda.Stream | None = None
        self._reset(None)

    def __deepcopy__(self, memo: dict) -> GraphedTrainStep:
        # a copy of the model (EMA, say) gets its own step with nothing captured: a graph cannot be copied
        return GraphedTrainStep(self.warmup_iters, self.graph_factory, self.require_cuda)

    def _reset(self, signature: tuple | None) -> None:
        self.signature, self.seen, self.graph = signature, 0, None
        self._inputs: torch.Tensor | None = None
        self._samples: list | None = None
        self._grads: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self._log_vars: dict | None = None

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(f'CUDA graph train step: {message}; running the eager step', stacklevel=3)

    def why_not(self, data: dict, optim_wrapper: Any) -> str | None:
        """Why this batch cannot take the graph (``None`` when it can)."""
        if self.disabled:
            return self.disabled
        if not isinstance(data.get('inputs'), torch.Tensor):
            return 'the preprocessed inputs are not one batched tensor'
        if getattr(optim_wrapper, '_accumulative_counts', 1) != 1:
            return 'gradient accumulation (accumulative_counts > 1)'
        if not hasattr(optim_wrapper, 'optimizer'):
            return f'{type(optim_wrapper).__name__} has no single optimizer'
        return None

    def __call__(self, model: Any, data: dict, optim_wrapper: Any, sync: GradientSync | None = None) -> dict:
        """One training step of ``model`` (the bare module, also under DDP). ``sync``: the processes of a
        multi-process job (given by ``GraphedDistributedDataParallel``), else None."""
        raw = data
        with optim_wrapper.optim_context(model):
            data = model.data_preprocessor(raw, True)
        inputs = data.get('inputs')
        if self.require_cuda and isinstance(inputs, torch.Tensor) and not inputs.is_cuda:
            return eager_train_step(model, data, optim_wrapper, sync)  # the CPU path is the plain one, silently
        reason = self.why_not(data, optim_wrapper)
        if reason is not None:
            self._warn_once(reason)
            return eager_train_step(model, data, optim_wrapper, sync)
        signature = batch_signature(data)
        if sync is not None and not sync.all_agree(signature_key(signature), inputs.device):
            # capture and replay must be the same on every rank (they hold collectives): all run eager
            self._warn_once('the processes got batches of different shapes in one step')
            return eager_train_step(model, data, optim_wrapper, sync)
        if signature != self.signature:
            self._reset(signature)
        if self.graph is None and self.seen < self.warmup_iters:
            self.seen += 1
            with on_stream(self.side_stream(inputs.device)):
                return eager_train_step(model, data, optim_wrapper, sync)
        if self.graph is None:
            error = None
            try:
                caller_tensors = frozenset(map(id, _sample_tensors([raw.get('inputs'), raw.get('data_samples')])))
                self._capture(model, data, optim_wrapper, sync, caller_tensors)
            except Exception as err:  # e.g. a host synchronisation inside the model: never fatal
                error = f'{type(err).__name__}: {str(err).splitlines()[0][:200]}' if str(err) else type(err).__name__
            failed_somewhere = sync is not None and sync.any_rank(error is not None, inputs.device)
            if error is None and failed_somewhere:  # all ranks replay the graph, or none
                error = 'it failed in another process'
            if error is not None:
                self.disabled = f'capture failed ({error})'
                self._reset(None)
                optim_wrapper.zero_grad()
                self._warn_once(self.disabled)
                return eager_train_step(model, data, optim_wrapper, sync)
        self._load(data)
        self.graph.replay()
        return self._step(optim_wrapper, sync)

    def side_stream(self, device: torch.device) -> torch.cuda.Stream | None:
        """The one stream the warm-ups and the capture run on, for ``device`` (None off CUDA). DDP is built on it
        too (:mod:`.graph_ddp`)."""
        if device.type != 'cuda':
            return None
        if self._stream is None or self._stream.device != device:
            self._stream = torch.cuda.Stream(device)
        return self._stream

    def _capture(self, model: Any, data: dict, optim_wrapper: Any, sync: GradientSync | None = None,
                 caller_tensors: frozenset = frozenset()) -> None:
        """Record forward + loss + backward on this batch's tensors, kept as the graph's static inputs (the replay
        computes them; later batches are copied into them). Those the data preprocessor made are kept as they are
        (no copy, no memory beyond an eager step's); those it passed through from the caller (``caller_tensors``:
        their ids) are copied, so that later batches never overwrite the caller's."""
        inputs, samples = data['inputs'], data.get('data_samples')
        self._inputs = inputs.clone() if id(inputs) in caller_tensors else inputs
        passed_through = any(id(t) in caller_tensors for t in _sample_tensors(samples))
        self._samples = copy.deepcopy(samples) if passed_through else samples
        static = dict(data, inputs=self._inputs, data_samples=self._samples)
        scaler = getattr(optim_wrapper, 'loss_scaler', None)
        amp = getattr(optim_wrapper, 'cast_dtype', None) if scaler is not None else None
        device_type = self._inputs.device.type

        def body() -> dict:
            # autocast's weight cache must stay off inside a graph (its casts are recorded, not kept)
            with torch.autocast(device_type, dtype=amp or torch.float16, enabled=scaler is not None,
                                cache_enabled=False):
                losses = model._run_forward(static, mode='loss')
            parsed, log_vars = model.parse_losses(losses)
            (scaler.scale(parsed) if scaler is not None else parsed).backward()
            return log_vars

        optim_wrapper.zero_grad()  # grads None: the graph allocates its own, overwritten at every replay
        graph = self.graph_factory()
        # under DDP, NCCL's watchdog thread queries events while this thread captures
        self._log_vars = graph.capture(body, stream=self.side_stream(self._inputs.device),
                                       capture_error_mode='global' if sync is None else 'thread_local')
        self._grads = [(p, p.grad) for group in optim_wrapper.param_groups for p in group['params']
                       if p.grad is not None]
        self.graph = graph

    def _load(self, data: dict) -> None:
        """Copy this batch into the graph's static tensors (nothing to copy for the captured batch itself)."""
        # the batch signature matched: same number of label tensors, same shapes, same order
        pairs = zip([self._inputs, *_sample_tensors(self._samples)],
                    [data['inputs'], *_sample_tensors(data.get('data_samples'))])
        for static, new in pairs:
            if new is not static:
                static.copy_(new, non_blocking=True)

    def _step(self, optim_wrapper: Any, sync: GradientSync | None = None) -> dict:
        """The optimizer wrapper's step on the replayed gradients, as ``update_params`` would."""
        for param, grad in self._grads:
            param.grad = grad
        if sync is not None:
            sync.reduce(_trained_params(optim_wrapper))
        optim_wrapper._inner_count += 1  # what its backward() counts; its should_update() reads it
        optim_wrapper.step()
        optim_wrapper.zero_grad()
        return OrderedDict((name, value.detach().clone()) for name, value in self._log_vars.items())
