"""Maintainer script (not a user tool): why does the CUDA graph step's capture fail under DDP on a GPU?

Runs a small mmengine model's graphed step in one NCCL process per variant (a fresh process each), from the
single-process step that works to ``GraphedDistributedDataParallel`` that failed on an H100, one difference
at a time, and prints per variant whether it captured, and the full traceback of a failed capture. Needs
mmengine and a GPU, not mmcv (so it can run while mmcv builds).

    python dev/graph_ddp_bisect.py               # every variant
    python dev/graph_ddp_bisect.py wrapper pg-only
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# name: what differs from the variant before it
VARIANTS = {
    'nodist': 'no process group: the single-process step (works)',
    'pg-only': 'an NCCL process group with a communicator made (one all-reduce), step without sync',
    'pg-threadlocal': 'pg-only, capture in thread_local mode',
    'ddp-built': 'the DDP wrapper built around the model and dropped, step called on the module without sync',
    'ddp-kept': 'ddp-built, the wrapper kept (it holds the gradient accumulators, made on the default stream)',
    'wrapper-gloo': 'GraphedDistributedDataParallel, gradients averaged over a gloo group (no NCCL in the step)',
    'wrapper-noreduce': 'the wrapper, gradient averaging skipped (only the gloo agreements)',
    'wrapper-global': 'the wrapper, capture in global mode',
    'wrapper': 'the wrapper as shipped (NCCL averaging, thread_local capture)',
    'wrapper-nowatchdog': 'the wrapper with NCCL async error handling and monitoring off',
}


def worker(variant: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    import torch.nn.functional as F
    from mmengine.model import BaseModel, MMDistributedDataParallel
    from mmengine.optim import OptimWrapper

    from convnextv2_dense.mm import graph_ddp, graph_step

    failures: list[str] = []

    class LoggedGraph(graph_step.CudaGraph):
        def capture(self, body, stream=None, capture_error_mode='global'):
            capture_error_mode = {'pg-threadlocal': 'thread_local', 'wrapper-global': 'global'}.get(
                variant, capture_error_mode)
            try:
                return super().capture(body, stream, capture_error_mode)
            except Exception:
                failures.append(traceback.format_exc())
                raise

    class Toy(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.GELU(),
                                     nn.Dropout(0.1), nn.Conv2d(32, 4, 1))
            self.graph_step = graph_step.GraphedTrainStep(warmup_iters=2, graph_factory=LoggedGraph)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            logits = self.net(inputs)
            if mode == 'loss':
                return dict(loss=F.cross_entropy(logits, torch.stack(data_samples)))
            return logits

        def train_step(self, data, optim_wrapper):
            return self.graph_step(self, data, optim_wrapper)

    torch.manual_seed(0)
    if variant != 'nodist':
        with socket.socket() as sock:
            sock.bind(('127.0.0.1', 0))
            port = sock.getsockname()[1]
        os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
        torch.cuda.set_device(0)
        dist.init_process_group('nccl', rank=0, world_size=1, device_id=torch.device('cuda', 0))
        probe = torch.ones(4, device='cuda')
        dist.all_reduce(probe)
    model = Toy().cuda()
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    runner = model
    if variant.startswith('ddp-'):
        kept = MMDistributedDataParallel(module=model, device_ids=[0])
        if variant == 'ddp-built':
            del kept
    elif variant.startswith('wrapper'):
        runner = graph_ddp.graphed_ddp_class()(module=model, device_ids=[0], broadcast_buffers=False)
        if variant == 'wrapper-gloo':
            gloo = dist.new_group([0], backend='gloo')
            runner.gradient_sync.process_group = gloo  # gloo all-reduces CUDA tensors through host copies
        if variant == 'wrapper-noreduce':
            runner.gradient_sync.reduce = lambda params: None
    for step in range(5):
        g = torch.Generator().manual_seed(step)
        data = dict(inputs=torch.randn(2, 3, 32, 32, generator=g),
                    data_samples=list(torch.randint(0, 4, (2, 32, 32), generator=g)))
        log = runner.train_step(data, optim_wrapper)
    torch.cuda.synchronize()
    stepper = model.graph_step
    print(f'RESULT {variant}: captured={stepper.graph is not None} disabled={stepper.disabled} '
          f'loss={float(log["loss"].detach()):.4f}', flush=True)
    for failure in failures:
        print(failure, flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str]) -> int:
    if argv[:1] == ['--worker']:
        worker(argv[1])
        return 0
    chosen = argv or list(VARIANTS)
    for variant in chosen:
        if variant not in VARIANTS:
            raise SystemExit(f'unknown variant {variant!r}; variants: {", ".join(VARIANTS)}')
    for variant in chosen:
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        if variant == 'wrapper-nowatchdog':
            env.update(TORCH_NCCL_ASYNC_ERROR_HANDLING='0', TORCH_NCCL_ENABLE_MONITORING='0',
                       TORCH_NCCL_DUMP_ON_TIMEOUT='0')
        print(f'--- {variant}: {VARIANTS[variant]}', flush=True)
        proc = subprocess.run([sys.executable, __file__, '--worker', variant], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=240)
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if 'pkg_resources' not in ln]
        print('\n'.join(lines[-60:]), flush=True)
        if proc.returncode:
            print(f'(exit {proc.returncode})', flush=True)
    return 0


if __name__ == '__main__':
    sys.path.insert(0, str(REPO))
    sys.exit(main(sys.argv[1:]))
