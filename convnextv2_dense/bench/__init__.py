"""Benchmarks and log plots; nothing in the core imports this package.

:mod:`.timing` (clocks, memory, table cells), :mod:`.impls` (the backbones compared: ours, HF's, timm's),
:mod:`.backbone` (the backbone alone), :mod:`.full` (one mmseg/mmdet training iteration),
:mod:`.profiling` (where an iteration's time goes), :mod:`.plot_logs` (mmengine scalar logs, matplotlib).
``tools/benchmark.py`` and ``tools/plot_logs.py`` are the command lines.
"""
