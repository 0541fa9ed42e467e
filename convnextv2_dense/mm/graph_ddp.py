"""The CUDA graph training step under DistributedDataParallel: ``GraphedDistributedDataParallel``.

mmengine's DDP wrapper runs its own ``train_step`` (forward through DDP, whose backward hooks all-reduce the
gradients bucket by bucket), so a model's graphed step (:mod:`.graph_step`) would never run in a multi-GPU
job. This wrapper runs the module's graphed step instead, with the gradient exchange moved after backward:

- forward + loss + backward run (or replay) on the bare module, so DDP's hooks stay idle; SyncBN's
  collectives, being part of forward and backward, are recorded in the graph (NCCL collectives can be
  captured when every rank captures them together);
- then :meth:`GradientSync.reduce` averages the gradients over the ranks eagerly, in flat buckets (one
  all-reduce per bucket), and the optimizer wrapper steps as before.

The ranks must take the same path at every step: whether a step is captured or replayed is a collective
property of the NCCL operations inside it. So the batch signature is agreed on (one tiny all-reduce per step
over a gloo group on the CPU, which does not wait for the GPU) before the step chooses eager,
capture or replay, and a capture that fails on any rank turns the graph off on every rank. Batches of
different shapes on different ranks run the eager step everywhere.

DDP is built on the graph step's side stream: the gradient accumulators it holds run on the stream they were
made on, and the captured backward may not wait on the default stream (this failed every capture on an
H100 until 2026-12-06's fix, docs/benchmarks.md).

Everything else (a module without a graph step, gradient accumulation, a graph step turned off) is
mmengine's ``MMDistributedDataParallel`` unchanged. Parameters that no rank used get a zero gradient (DDP
without ``find_unused_parameters`` would stop with an error instead).
"""
from __future__ import annotations

import functools
import zlib
from typing import Any

import torch

__all__ = ['GradientSync', 'graphed_ddp_class', 'signature_key']


def signature_key(signature: tuple) -> int:
    """A number that equal batch signatures share across processes (device indices left out: each rank has
    its own GPU)."""
    def strip(value: Any) -> Any:
        if isinstance(value, torch.device):
            return value.type
        if isinstance(value, tuple):
            return tuple(strip(v) for v in value)
        return value
    return zlib.crc32(repr(strip(signature)).encode())


class GradientSync:
    """The collectives the graphed step needs across the ranks of a process group.

    Args:
        process_group: The gradients' group (None: the default one).
        bucket_mb (float): Gradients are flattened into buckets of at most this many MiB, one all-reduce
            each. Defaults to 100.
        control_group: A gloo group of the same ranks for the agreements, on CPU tensors, so that they do not
            wait for the GPU. Defaults to None: ``process_group``, on tensors of the step's device.
    """

    def __init__(self, process_group: Any = None, bucket_mb: float = 100, control_group: Any = None) -> None:
        if bucket_mb <= 0:
            raise ValueError(f'bucket_mb must be positive, got {bucket_mb}')
        self.process_group = process_group
        self.control_group = control_group
        self.bucket_bytes = int(bucket_mb * 2 ** 20)

    @property
    def world_size(self) -> int:
        import torch.distributed as dist
        return dist.get_world_size(self.process_group)

    def _all_reduce_max(self, values: list[int], device: torch.device) -> list[int]:
        import torch.distributed as dist
        group = self.process_group if self.control_group is None else self.control_group
        flags = torch.tensor(values, dtype=torch.int64, device=device if self.control_group is None else 'cpu')
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
        return flags.tolist()

    def all_agree(self, key: int, device: torch.device) -> bool:
        """Whether every rank passed the same ``key``."""
        high, low = self._all_reduce_max([key, -key], device)
        return high == -low

    def any_rank(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on at least one rank."""
        return bool(self._all_reduce_max([int(flag)], device)[0])

    def reduce(self, params: list[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` over the ranks, in place (a missing gradient counts as zeros)."""
        import torch.distributed as dist
        world = self.world_size
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        for bucket in self._buckets([p.grad for p in params]):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            flat.div_(world)
            dist.all_reduce(flat, group=self.process_group)
            # back in logical order, whatever each gradient's strides (channels-last weights keep theirs)
            views = [v.view(g.shape) for v, g in zip(flat.split([g.numel() for g in bucket]), bucket)]
            if hasattr(torch, '_foreach_copy_'):
                torch._foreach_copy_(bucket, views)
            else:  # pragma: no cover  (torch < 2.2)
                for grad, view in zip(bucket, views):
                    grad.copy_(view)

    def _buckets(self, grads: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Consecutive gradients of one dtype and device, at most ``bucket_bytes`` each (a bigger one alone)."""
        buckets: list[list[torch.Tensor]] = []
        size = 0
        for grad in grads:
            nbytes = grad.numel() * grad.element_size()
            last = buckets[-1] if buckets else None
            if (last is None or last[0].dtype != grad.dtype or last[0].device != grad.device
                    or size + nbytes > self.bucket_bytes):
                buckets.append([grad])
                size = nbytes
            else:
                last.append(grad)
                size += nbytes
        return buckets


def _graph_side_stream(module: torch.nn.Module) -> torch.cuda.Stream | None:
    """The side stream of ``module``'s graph step on the module's GPU (None: no graph step, or not on a GPU)."""
    step = getattr(module, 'graph_step', None)
    param = next(module.parameters(), None)
    if step is None or param is None or param.device.type != 'cuda':
        return None
    return step.side_stream(param.device)


@functools.cache
def graphed_ddp_class() -> type:
    """The wrapper class, made on first use (mmengine's wrappers are imported only then). The registry holds
    the class itself: mmengine's Runner checks whether a wrapper type subclasses DDP before building it."""
    from mmengine.model import MMDistributedDataParallel

    class GraphedDistributedDataParallel(MMDistributedDataParallel):
        """``MMDistributedDataParallel`` that runs the module's CUDA graph step (module docstring of
        ``convnextv2_dense.mm.graph_ddp``). Takes DDP's arguments, plus:

        Args:
            bucket_mb (float): Size of the flat gradient buckets, one all-reduce each. Defaults to 100.
        """

        def __init__(self, module: torch.nn.Module, bucket_mb: float = 100, **kwargs: Any) -> None:
            import torch.distributed as dist

            from .graph_step import on_stream
            # DDP keeps every parameter's gradient accumulator alive, and an accumulator runs on the stream
            # that was current when it was made. Made on the default stream, each one would make the
            # captured backward (on the step's side stream) wait on the default stream, which a capture
            # forbids ("operation would make the legacy stream depend on a capturing blocking stream"). So
            # DDP is built on that side stream; eager steps on other streams only gain a stream wait.
            with on_stream(_graph_side_stream(module)):
                super().__init__(module=module, **kwargs)
            control = None
            if dist.get_backend(self.process_group) != 'gloo':  # every rank builds the wrapper: a collective call
                control = dist.new_group(dist.get_process_group_ranks(self.process_group), backend='gloo')
            self.gradient_sync = GradientSync(self.process_group, bucket_mb, control)

        def graph_step_usable(self, optim_wrapper: Any) -> bool:
            """Whether this step goes through the module's graph step (else mmengine's DDP step)."""
            step = getattr(self.module, 'graph_step', None)
            return (step is not None and not step.disabled
                    and getattr(optim_wrapper, '_accumulative_counts', 1) == 1)

        def train_step(self, data: Any, optim_wrapper: Any) -> dict:
            if not self.graph_step_usable(optim_wrapper):
                return super().train_step(data, optim_wrapper)
            return self.module.graph_step(self.module, data, optim_wrapper, sync=self.gradient_sync)

    return GraphedDistributedDataParallel

