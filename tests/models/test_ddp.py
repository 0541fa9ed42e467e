"""Under DistributedDataParallel every gradient fits its bucket view: no "Grad strides do not match" warning.

The trunk runs channels-last inside; with contiguous conv weights, each weight gradient came out with
other strides than DDP's bucket view and was copied every step, with a warning on every multi-GPU run.
"""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = '''
import os, sys, warnings, torch, torch.distributed as dist
os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=sys.argv[1])
dist.init_process_group('gloo', rank=0, world_size=1)
from convnextv2_dense import ConvNeXtV2
model = torch.nn.parallel.DistributedDataParallel(ConvNeXtV2('atto'))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    for _ in range(2):
        sum(out.mean() for out in model(torch.randn(2, 3, 64, 64))).backward()
dist.destroy_process_group()
print('WARNINGS', [str(w.message)[:80] for w in caught if 'stride' in str(w.message)])
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # two processes, about 25 s on a CPU
def test_ddp_gradients_match_their_buckets():
    done = subprocess.run([sys.executable, '-c', SCRIPT, str(free_port())], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == 'WARNINGS []', done.stdout + done.stderr[-2000:]
