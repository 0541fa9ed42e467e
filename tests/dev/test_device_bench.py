"""dev/device_bench.sh, the GPU script, on the CPU: step dispatch, failure reporting, the mmcv step."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / 'dev' / 'device_bench.sh'


def run(tmp_path: Path, *steps: str, **env: str) -> subprocess.CompletedProcess:
    environ = dict(os.environ, OUT=str(tmp_path / 'out'), LOG_DIR=str(tmp_path / 'logs'), PYTHON=sys.executable)
    environ.update(env)
    return subprocess.run(['bash', str(SCRIPT), *steps], cwd=REPO, env=environ, capture_output=True, text=True,
                          timeout=120)


def test_unknown_step_fails_and_lists_the_steps(tmp_path):
    done = run(tmp_path, 'no-such-step')
    assert done.returncode != 0
    assert "unknown step 'no-such-step'" in done.stderr and 'gpu-tests' in done.stderr
    assert "step 'no-such-step' failed" in (tmp_path / 'out' / 'summary.md').read_text()


def test_mmcv_step_keeps_an_importable_mmcv(tmp_path):
    done = run(tmp_path, 'mmcv', WHEELS=str(tmp_path / 'no-wheels'))
    assert done.returncode == 0, done.stderr
    assert 'already importable' in done.stdout


def test_mmcv_step_without_mmcv_or_sdist_fails_clearly(tmp_path):
    # An interpreter without site-packages cannot import mmcv: the step must say there is no sdist to build.
    bare = tmp_path / 'bare-python'
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    bare.chmod(0o755)
    done = run(tmp_path, 'mmcv', WHEELS=str(tmp_path / 'no-wheels'), PYTHON=str(bare))
    assert done.returncode != 0
    assert 'no mmcv sdist in' in done.stdout


def test_wheels_step_leaves_an_sdist_to_the_mmcv_step(tmp_path):
    wheels = tmp_path / 'wheels'
    wheels.mkdir()
    (wheels / 'mmcv-2.1.0.tar.gz').write_bytes(b'')  # pip would try (and fail) to build it without isolation
    done = run(tmp_path, 'wheels', WHEELS=str(wheels), WHEEL_PACKAGES='mmcv')
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'skip mmcv: no wheel' in done.stdout


def test_step_timeout_stops_a_slow_step_and_runs_the_next(tmp_path):
    # An interpreter that hangs makes the env step hang; STEP_TIMEOUT must stop it, report it, and go on.
    slow = tmp_path / 'slow-python'
    slow.write_text('#!/bin/sh\nexec sleep 60\n')
    slow.chmod(0o755)
    done = run(tmp_path, 'env', 'no-such-step', PYTHON=str(slow), STEP_TIMEOUT='2')
    assert done.returncode != 0
    summary = (tmp_path / 'out' / 'summary.md').read_text()
    assert "step 'env' failed (exit 124, timed out after 2 s)" in summary
    assert "step 'no-such-step' failed" in summary  # the next step ran, and its child's report was kept
    assert 'failed steps: env no-such-step' in done.stderr


def test_step_timeout_leaves_a_passing_step_alone(tmp_path):
    done = run(tmp_path, 'mmcv', WHEELS=str(tmp_path / 'no-wheels'), STEP_TIMEOUT='100')
    assert done.returncode == 0, done.stderr
    assert 'already importable' in done.stdout
