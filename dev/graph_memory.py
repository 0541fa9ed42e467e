"""Maintainer probe (not a user tool): memory and time of each of the first training steps of a config, with
and without the CUDA graph step, on the GPU: where the graph step's peak comes from.

    python dev/graph_memory.py configs/upernet_convnextv2_base_ade20k.py --steps 8
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's package, installed or not


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--steps', type=int, default=8)
    args = parser.parse_args()
    from convnextv2_dense.bench.full import FullSettings, _build, prepare_full
    from convnextv2_dense.bench.timing import Row
    setup = prepare_full(FullSettings(args.config, device='cuda'))
    gib = 2 ** 30
    for impl in ('ours-eager', 'ours'):
        row = Row(impl, setup.cfg.model.backbone.get('arch', 'custom'), setup.size, setup.n, 'train')
        model, optim_wrapper = _build(row, setup.cfg, setup.registry, setup.device)
        print(f'{impl}: after build allocated {torch.cuda.memory_allocated() / gib:.2f} GiB')
        for step in range(args.steps):
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
            start = time.perf_counter()
            model.train_step(setup.data, optim_wrapper)
            torch.cuda.synchronize()
            print(f'{impl} step {step}: {(time.perf_counter() - start) * 1e3:7.1f} ms, peak allocated '
                  f'{torch.cuda.max_memory_allocated() / gib:.2f}, allocated {torch.cuda.memory_allocated() / gib:.2f}, '
                  f'peak reserved {torch.cuda.max_memory_reserved() / gib:.2f}, reserved '
                  f'{torch.cuda.memory_reserved() / gib:.2f} GiB')
        del model, optim_wrapper
        torch.cuda.empty_cache()


if __name__ == '__main__':
    main()
