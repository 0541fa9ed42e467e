"""Small utilities with no OpenMMLab dependency (e.g. :mod:`.plot_logs`, which needs matplotlib)."""
