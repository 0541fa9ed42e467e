"""Maintainer probe (not a user tool): memory and time of each of the first training steps of a config, with
and without the CUDA graph step, on the GPU: where the graph step's peak comes from.

    python dev/graph_memory.py configs/upernet_convnextv2_base_ade20k.py --steps 8
    python dev/graph_memory.py configs/upernet_convnextv2_base_ade20k.py --owners 3  # what is live at step 3's peak

With ``--owners STEP``, the memory allocated during that step and still live at its peak, summed by the first
calling line outside torch (the CUDA allocator's history of that step): run with the graph step's capture (its
``warmup_iters``, 3 as shipped) and an eager step to see what the capture adds.
"""
import collections
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
    parser.add_argument('--owners', type=int, metavar='STEP', help='list what is live at this step\'s peak')
    parser.add_argument('--top', type=int, default=15)
    args = parser.parse_args()
    from convnextv2_dense.bench.full import FullSettings, _build, prepare_full
    from convnextv2_dense.bench.timing import Row, free_memory
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
            before = torch.cuda.memory_allocated()
            if step == args.owners:
                torch.cuda.memory._record_memory_history(stacks='python', max_entries=2_000_000)
            model.train_step(setup.data, optim_wrapper)
            torch.cuda.synchronize()
            if step == args.owners:
                snapshot = torch.cuda.memory._snapshot()
                torch.cuda.memory._record_memory_history(enabled=None)
                print_owners(impl, step, snapshot, before, args.top)
            print(f'{impl} step {step}: {(time.perf_counter() - start) * 1e3:7.1f} ms, peak allocated '
                  f'{torch.cuda.max_memory_allocated() / gib:.2f}, allocated {torch.cuda.memory_allocated() / gib:.2f}, '
                  f'peak reserved {torch.cuda.max_memory_reserved() / gib:.2f}, reserved '
                  f'{torch.cuda.memory_reserved() / gib:.2f} GiB')
        del model, optim_wrapper
        free_memory(setup.device)


def print_owners(impl: str, step: int, snapshot: dict, before: int, top: int) -> None:
    """The allocations of the recorded step live at its peak, by first calling line outside torch."""
    events = [e for trace in snapshot['device_traces'] for e in trace if e['action'] in ('alloc', 'free_requested')]
    live, current, peak, peak_at = {}, before, before, -1
    for index, event in enumerate(events):  # find the peak
        current += event['size'] if event['action'] == 'alloc' else -event['size']
        if current > peak:
            peak, peak_at = current, index
    for event in events[:peak_at + 1]:  # the allocations of the step live at it
        if event['action'] == 'alloc':
            live[event['addr']] = event
        else:
            live.pop(event['addr'], None)
    owners = collections.Counter()
    for event in live.values():
        owners[caller(event.get('frames', []))] += event['size']
    gib = 2 ** 30
    print(f'{impl} step {step}: peak {peak / gib:.3f} GiB = {before / gib:.3f} live before the step + '
          f'{sum(owners.values()) / gib:.3f} allocated in it, by first line outside torch:')
    for where, size in owners.most_common(top):
        print(f'  {size / 2 ** 20:9.1f} MiB  {where}')


def caller(frames: list) -> str:
    """The innermost frame outside torch's own files (the line of mm or project code that asked)."""
    for frame in frames:
        name = frame.get('filename', '')
        if '/torch/' not in name and not name.startswith('<'):
            return f"{'/'.join(Path(name).parts[-3:])}:{frame.get('line')} {frame.get('name')}"
    return 'torch (no outer frame)'


if __name__ == '__main__':
    main()
