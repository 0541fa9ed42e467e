"""``python -m convnextv2_dense.doctor``: each judgement fed made-up facts, then a real run in this environment."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from convnextv2_dense.doctor import ABSENT, OK, PROBLEM, Facts, Finding, diagnose, report

REPO = Path(__file__).resolve().parents[1]
MM = dict(mmengine='0.10.7', mmcv='2.1.0', mmdet='3.3.0', mmseg='1.2.2')


def facts(**changes) -> Facts:
    """A healthy CPU machine, changed by ``changes``."""
    base = dict(python='3.11.7', versions=dict(torch='2.13.0+cpu', **MM), torch_cuda=None, gpu=None,
                mmcv_cuda='not available', roi_align={'cpu': 'ok'})
    base.update(changes)
    return Facts(**base)


def by_name(findings: list[Finding]) -> dict[str, Finding]:
    return {f.name: f for f in findings}


def problems(findings: list[Finding]) -> list[str]:
    return [f.name for f in findings if f.state == PROBLEM]


def test_a_healthy_cpu_machine_has_no_problems():
    found = diagnose(facts())
    assert problems(found) == []
    assert by_name(found)['mmcv build'].detail == 'ops load with torch 2.13.0+cpu (CPU only)'
    assert by_name(found)['torch'].detail == '2.13.0+cpu (CPU build, no GPU visible)'


def test_a_healthy_gpu_machine_has_no_problems():
    found = diagnose(facts(versions=dict(torch='2.1.0+cu121', **MM), torch_cuda='12.1', gpu='NVIDIA H200',
                           mmcv_cuda='12.1', roi_align={'cpu': 'ok', 'cuda': 'ok'}))
    assert problems(found) == []
    assert by_name(found)['RoIAlign on cuda'].state == OK


def test_a_cpu_only_mmcv_on_a_gpu_machine_is_caught_with_the_cuda_build_fix():
    found = by_name(diagnose(facts(versions=dict(torch='2.13.0', **MM), torch_cuda='12.8', gpu='NVIDIA H100',
                                   mmcv_cuda='not available')))
    assert found['mmcv build'].state == PROBLEM
    assert 'built without CUDA' in found['mmcv build'].detail and "pip's cache" in found['mmcv build'].detail
    fix = found['mmcv build'].fix
    assert 'FORCE_CUDA=1' in fix and 'CUDA 12.8' in fix and 'TORCH_CUDA_ARCH_LIST' in fix
    assert 'pip cache remove mmcv' in fix


def test_mmcv_built_for_another_torch_is_named():
    error = 'ImportError: /x/mmcv/_ext.cpython-311-x86_64-linux-gnu.so: undefined symbol: _ZN3c104cuda9SetDeviceEi'
    found = by_name(diagnose(facts(mmcv_ops_error=error, roi_align={})))
    assert found['mmcv ops'].state == PROBLEM
    assert 'built for another torch' in found['mmcv ops'].detail and 'undefined symbol' in found['mmcv ops'].detail
    assert found['mmcv ops'].fix.startswith('rebuild mmcv for torch 2.13.0+cpu: ')


def test_mmcv_without_compiled_ops_is_named():
    found = by_name(diagnose(facts(mmcv_ops_error="ModuleNotFoundError: No module named 'mmcv._ext'", roi_align={})))
    assert 'installed without compiled ops (mmcv-lite' in found['mmcv ops'].detail


def test_a_cuda_major_version_mismatch_is_named():
    found = by_name(diagnose(facts(versions=dict(torch='2.1.0+cu121', **MM), torch_cuda='12.1', gpu='NVIDIA A100',
                                   mmcv_cuda='11.8', roi_align={'cpu': 'ok', 'cuda': 'ok'})))
    assert found['mmcv build'].state == PROBLEM
    assert found['mmcv build'].detail == "mmcv's ops were compiled with CUDA 11.8, torch with CUDA 12.1"


def test_a_gpu_kernel_missing_for_this_gpu_points_at_the_arch_list():
    found = by_name(diagnose(facts(versions=dict(torch='2.1.0+cu121', **MM), torch_cuda='12.1', gpu='NVIDIA H200',
                                   mmcv_cuda='12.1', roi_align={
                                       'cpu': 'ok', 'cuda': 'RuntimeError: CUDA error: no kernel image is available'})))
    assert found['RoIAlign on cuda'].state == PROBLEM
    assert 'TORCH_CUDA_ARCH_LIST' in found['RoIAlign on cuda'].detail


def test_a_wrong_roi_align_result_is_a_problem():
    found = by_name(diagnose(facts(roi_align={'cpu': 'wrong result 0.0 (expected 7.5)'})))
    assert found['RoIAlign on cpu'].state == PROBLEM


def test_missing_mm_packages_are_reported_not_installed_and_are_a_problem_only_when_required():
    bare = facts(versions=dict(torch='2.1.0', mmengine=None, mmcv=None, mmdet=None, mmseg=None), roi_align={})
    found = diagnose(bare)
    assert problems(found) == []
    assert [f.state for f in found if f.name.startswith('mm')] == [ABSENT] * 4
    assert problems(diagnose(bare, require_mm=True)) == ['mmengine', 'mmcv', 'mmdet', 'mmseg']


def test_a_missing_or_too_old_torch_is_a_problem():
    assert by_name(diagnose(facts(versions=dict(torch=None, **MM))))['torch'].state == PROBLEM
    error = 'convnextv2_dense needs torch>=2.1, but torch 2.0.1 is installed; upgrade it (pip install "torch>=2.1")'
    torch_found = by_name(diagnose(facts(versions=dict(torch='2.0.1', **MM), import_errors={'torch': error})))['torch']
    assert torch_found.state == PROBLEM and torch_found.detail == error


def test_an_mm_package_that_fails_to_import_is_a_problem_with_the_mmcv_range():
    error = 'AssertionError: MMCV==2.2.0 is used but incompatible. Please install mmcv>=2.0.0rc4, <2.2.0.'
    found = by_name(diagnose(facts(import_errors={'mmdet': error})))
    assert found['mmdet'].state == PROBLEM and '<2.2.0' in found['mmdet'].fix


def test_the_report_gives_each_problem_its_fix_and_counts_them():
    text = report(diagnose(facts(gpu='NVIDIA H100', torch_cuda='12.8')))
    lines = text.splitlines()
    assert any(line.split()[:2] == ['mmcv', 'build'] and 'PROBLEM' in line for line in lines)
    assert any(line.strip().startswith('fix:') for line in lines)
    assert lines[-1] == '1 problem(s) found'


def test_the_doctor_passes_in_this_environment():
    done = subprocess.run([sys.executable, '-m', 'convnextv2_dense.doctor'], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == 'no problems found'
    if importlib.util.find_spec('mmcv') is None:
        assert 'not installed' in done.stdout
        required = subprocess.run([sys.executable, '-m', 'convnextv2_dense.doctor', '--require-mm'],
                                  capture_output=True, text=True, cwd=REPO, timeout=300)
        assert required.returncode == 1 and 'make env' in required.stdout
    else:
        assert any(line.startswith('RoIAlign on cpu') and ' ok ' in line for line in done.stdout.splitlines())


def test_roi_align_runs_right_on_this_cpu():
    pytest.importorskip('mmcv.ops')
    from convnextv2_dense.doctor import run_roi_align
    assert run_roi_align('cpu') == 'ok'


def test_a_crash_in_a_probe_is_an_answer_not_the_doctors_death():
    from convnextv2_dense.doctor import FAILED, run_probe
    crash = [sys.executable, '-c', 'import os, signal; os.kill(os.getpid(), signal.SIGSEGV)']
    answer = run_probe('cuda-version', argv=crash)
    assert answer.startswith(FAILED) and 'SIGSEGV' in answer
    error = run_probe('cuda-version', argv=[sys.executable, '-c', 'raise SystemExit("no such op")'])
    assert error == f'{FAILED}exit status 1: no such op'


def test_mmcv_that_crashes_on_its_cuda_version_is_judged_by_its_roi_align_runs():
    crashed = 'the process was killed by SIGSEGV (a crash in compiled code)'
    healthy = by_name(diagnose(facts(torch_cuda='13.0', gpu='NVIDIA H200', mmcv_cuda=None, mmcv_cuda_error=crashed,
                                     roi_align={'cpu': 'ok', 'cuda': 'ok'})))
    assert healthy['mmcv build'].state == 'note' and 'SIGSEGV' in healthy['mmcv build'].detail
    assert not problems(list(healthy.values()))
    broken = diagnose(facts(torch_cuda='13.0', gpu='NVIDIA H200', mmcv_cuda=None, mmcv_cuda_error=crashed,
                            roi_align={'cpu': 'ok', 'cuda': 'failed: the process was killed by SIGSEGV'}))
    assert problems(broken) == ['RoIAlign on cuda']
    assert 'the check failed: the process was killed' in by_name(broken)['RoIAlign on cuda'].detail


def test_collect_asks_each_probe_and_keeps_going_after_a_crash():
    pytest.importorskip('mmcv.ops')
    from convnextv2_dense.doctor import FAILED, collect
    asked = []

    def probe(name: str) -> str:
        asked.append(name)
        return f'{FAILED}the process was killed by SIGSEGV' if name == 'cuda-version' else 'ok'
    found = collect(probe=probe)
    assert found.mmcv_cuda is None and 'SIGSEGV' in found.mmcv_cuda_error
    assert found.roi_align['cpu'] == 'ok'
    assert asked[:2] == ['cuda-version', 'roi-cpu']


def test_each_probe_runs_as_a_child_process_here():
    pytest.importorskip('mmcv.ops')
    from convnextv2_dense.doctor import run_probe
    assert run_probe('roi-cpu') == 'ok'
    assert re.fullmatch(r'not available|\d+\.\d+(\.\d+)?', run_probe('cuda-version'))
