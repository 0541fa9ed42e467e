"""``python -m convnextv2_dense.doctor``: can this environment run the toolkit, and if not, what fixes it.

It prints the versions of Python, torch (and its CUDA), mmengine, mmcv, mmdet and mmseg; whether mmcv's
compiled ops load and compute a tiny RoIAlign right on the CPU and, with a GPU, on the GPU; and whether mmcv
was built for this torch (its ops link against the running torch, and have CUDA kernels of the same CUDA
major version when torch can use a GPU). Each problem comes with its fix. Exit status 1 when something is
broken; packages that are not installed are reported as such, and are a problem only with ``--require-mm``.

mmcv's compiled code runs in child processes (:func:`run_probe`): a broken build can crash the process
(some source builds of mmcv 2.1.0 die with SIGSEGV in ``get_compiling_cuda_version``) instead of raising,
and the doctor then reports the crash and goes on. The probing (:func:`collect`) is kept apart from the
judging (:func:`diagnose`), which works on plain :class:`Facts` and can be fed any.
"""
from __future__ import annotations

import argparse
import platform
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MM_PACKAGES = ('mmengine', 'mmcv', 'mmdet', 'mmseg')
DISTRIBUTIONS = {'mmcv': ('mmcv', 'mmcv-lite'), 'mmseg': ('mmsegmentation',)}  # pip names where they differ
OK, PROBLEM, ABSENT, NOTE = 'ok', 'PROBLEM', 'not installed', 'note'
ROI_EXPECTED = 7.5  # the mean of 4y + x at y, x in {0.75, 2.25}: see run_roi_align
REBUILD_MMCV = ('pip uninstall -y mmcv && pip cache remove mmcv && '
                'pip install --no-build-isolation --no-cache-dir mmcv==2.1.0')
CUDA_BUILD = ('with CUDA: FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="<your GPU, e.g. 9.0>" and an nvcc of CUDA {cuda} '
              '(torch.version.cuda) on PATH, then ')


@dataclass
class Facts:
    """What :func:`collect` found; every field may be filled by hand to test :func:`diagnose`.

    Args:
        python (str): Python version.
        versions (dict[str, str | None]): Version of ``'torch'`` and each mm package, None if absent.
        import_errors (dict[str, str]): Packages that are installed but fail to import, with the error.
        torch_cuda (str, optional): ``torch.version.cuda``: None for a CPU build.
        gpu (str, optional): Name of the first visible GPU, None if torch sees none.
        mmcv_ops_error (str, optional): Why ``mmcv.ops`` failed to import, None if it imported.
        mmcv_cuda (str, optional): CUDA version mmcv's ops were compiled with, ``'not available'`` for a
            CPU-only build, None if unknown.
        mmcv_cuda_error (str, optional): Why asking mmcv for that version failed (it crashed the process,
            say), None if it answered.
        roi_align (dict[str, str]): Device -> ``'ok'`` or what went wrong running RoIAlign there.
    """

    python: str = ''
    versions: dict[str, str | None] = field(default_factory=dict)
    import_errors: dict[str, str] = field(default_factory=dict)
    torch_cuda: str | None = None
    gpu: str | None = None
    mmcv_ops_error: str | None = None
    mmcv_cuda: str | None = None
    mmcv_cuda_error: str | None = None
    roi_align: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    """One line of the report: ``state`` is ok, PROBLEM, not installed or note; ``fix`` says what to do."""

    name: str
    state: str
    detail: str
    fix: str = ''


def run_roi_align(device: str) -> str:
    """RoIAlign of one box over a 4x4 map whose value is 4y + x; ``'ok'`` if it gives ROI_EXPECTED."""
    import torch
    from mmcv.ops import roi_align
    try:
        x = torch.arange(16.0, device=device).reshape(1, 1, 4, 4)
        rois = torch.tensor([[0.0, 0.0, 0.0, 3.0, 3.0]], device=device)
        out = roi_align(x, rois, (1, 1), 1.0, 2, 'avg', False)
        value = float(out.flatten()[0])
    except Exception as err:  # noqa: BLE001 - a broken build fails in many ways; report whichever
        return f'{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ""}'
    return 'ok' if abs(value - ROI_EXPECTED) < 1e-4 else f'wrong result {value} (expected {ROI_EXPECTED})'


def _cuda_version() -> str:
    from mmcv.ops import get_compiling_cuda_version
    return get_compiling_cuda_version()


PROBES: dict[str, Callable[[], str]] = {
    'cuda-version': _cuda_version,
    'roi-cpu': lambda: run_roi_align('cpu'),
    'roi-cuda': lambda: run_roi_align('cuda'),
}
FAILED = 'failed: '  # how a probe's answer starts when the probe itself did not run to the end


def run_probe(name: str, argv: Sequence[str] | None = None, timeout: float = 300) -> str:
    """Run the probe ``name`` (a key of :data:`PROBES`) in a child process and return its answer.

    An answer that starts with :data:`FAILED` says how the child ended instead: killed by a signal (a
    segmentation fault in compiled code), a non-zero exit with the last line of its error output, or a
    timeout. ``argv`` replaces the child's command line (tests).
    """
    argv = list(argv or [sys.executable, '-m', 'convnextv2_dense.doctor', '--probe', name])
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f'{FAILED}did not finish in {timeout:.0f} s'
    if done.returncode < 0:
        try:
            why = signal.Signals(-done.returncode).name
        except ValueError:
            why = f'signal {-done.returncode}'
        return f'{FAILED}the process was killed by {why} (a crash in compiled code)'
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ['no error output'])[-1]
        return f'{FAILED}exit status {done.returncode}: {last}'
    return (done.stdout.strip().splitlines() or [''])[-1]


def collect(probe: Callable[[str], str] = run_probe) -> Facts:
    """Probe this environment: versions, mmcv's compiled ops, RoIAlign on the CPU and the first GPU.

    Args:
        probe (Callable[[str], str]): Runs one of :data:`PROBES` by name (each in a child process by
            default, so that a crash in compiled code is an answer).
    """
    from importlib import import_module, metadata
    facts = Facts(python=platform.python_version())
    for name in ('torch', *MM_PACKAGES):
        facts.versions[name] = None
        for dist in DISTRIBUTIONS.get(name, (name,)):
            try:
                facts.versions[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                pass
        if facts.versions[name] is None:
            continue
        try:
            module = import_module(name)
            facts.versions[name] = getattr(module, '__version__', facts.versions[name])
        except Exception as err:  # noqa: BLE001 - mmdet asserts on mmcv's version, ops fail to link, ...
            facts.import_errors[name] = f'{type(err).__name__}: {err}'
    if 'torch' in sys.modules:
        import torch
        try:
            import_module(f'{__package__}.compat')  # checks torch against the supported floor
        except ImportError as err:
            facts.import_errors['torch'] = str(err)
        facts.torch_cuda = torch.version.cuda
        try:
            facts.gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        except Exception as err:  # noqa: BLE001 - a broken driver; torch then runs on the CPU only
            facts.import_errors.setdefault('torch', f'torch sees a GPU but cannot use it: {err}')
    if facts.versions.get('mmcv') and 'mmcv' not in facts.import_errors and 'torch' in sys.modules:
        try:
            import mmcv.ops  # noqa: F401 - does it load at all (in this process: errors, not crashes)
        except Exception as err:  # noqa: BLE001 - ImportError, or OSError from the linker
            facts.mmcv_ops_error = f'{type(err).__name__}: {err}'
        if facts.mmcv_ops_error is None:
            answer = probe('cuda-version')
            if answer.startswith(FAILED):
                facts.mmcv_cuda_error = answer[len(FAILED):]
            else:
                facts.mmcv_cuda = answer
            facts.roi_align['cpu'] = probe('roi-cpu')
            # with the build's CUDA version unknown, a RoIAlign on the GPU is what tells
            if facts.gpu is not None and facts.mmcv_cuda != 'not available':
                facts.roi_align['cuda'] = probe('roi-cuda')
    return facts


def diagnose(facts: Facts, require_mm: bool = False) -> list[Finding]:
    """Judge ``facts``: one :class:`Finding` per component, with the fix for every problem.

    Args:
        facts (Facts): What was found.
        require_mm (bool): Treat a missing mm package as a problem. Defaults to False.
    """
    findings = [Finding('python', OK, facts.python)]
    findings.append(_torch_finding(facts))
    for name in MM_PACKAGES:
        version = facts.versions.get(name)
        if version is None:
            findings.append(Finding(name, PROBLEM if require_mm else ABSENT, 'needed by the mm configs and tools only',
                                    'make env, or see README "Installing into an existing OpenMMLab environment"'))
        elif name in facts.import_errors:
            findings.append(Finding(name, PROBLEM, f'{version}, but importing it fails: {facts.import_errors[name]}',
                                    _import_fix(name, facts.import_errors[name])))
        else:
            findings.append(Finding(name, OK, version))
    if facts.versions.get('mmcv') and 'mmcv' not in facts.import_errors and facts.versions.get('torch'):
        findings += _mmcv_build_findings(facts)
    return findings


def _torch_finding(facts: Facts) -> Finding:
    version = facts.versions.get('torch')
    if version is None:
        return Finding('torch', PROBLEM, 'not installed', 'pip install torch (the floor is in requirements/runtime.txt)')
    error = facts.import_errors.get('torch')
    if error is not None and 'needs torch>=' in error:
        return Finding('torch', PROBLEM, error, 'install a supported torch (requirements/runtime.txt), then mmcv '
                       'built for it')
    if error is not None:
        return Finding('torch', PROBLEM, f'{version}, but importing it fails: {error}',
                       f'reinstall torch: pip install --force-reinstall "torch=={version.split("+")[0]}"')
    cuda = f'CUDA {facts.torch_cuda}' if facts.torch_cuda else 'CPU build'
    gpu = f', GPU: {facts.gpu}' if facts.gpu else ', no GPU visible'
    return Finding('torch', OK, f'{version} ({cuda}{gpu})')


def _import_fix(name: str, error: str) -> str:
    if name == 'mmcv' or 'mmcv' in error.lower():
        return 'install the mmcv this mmdet / mmseg accept (mmcv>=2.0.0rc4,<2.2.0): ' + REBUILD_MMCV
    return f'pip install --force-reinstall {name} (versions in requirements/mminstall.txt)'


def _mmcv_build_findings(facts: Facts) -> list[Finding]:
    rebuild = (CUDA_BUILD.format(cuda=facts.torch_cuda) if facts.torch_cuda else '') + REBUILD_MMCV
    if facts.mmcv_ops_error is not None:
        error = facts.mmcv_ops_error
        why = ('built for another torch (its compiled ops do not link against this one)'
               if 'undefined symbol' in error or 'cannot open shared object' in error
               else 'installed without compiled ops (mmcv-lite, or MMCV_WITH_OPS=0)' if "'mmcv._ext'" in error
               else 'its compiled ops fail to load')
        return [Finding('mmcv ops', PROBLEM, f'mmcv is {why}: {error}',
                        f'rebuild mmcv for torch {facts.versions["torch"]}: {rebuild}')]
    found = []
    if facts.mmcv_cuda_error is not None:
        # mmcv's own collect_env asks the same question and will fail the same way; training does not ask
        found.append(Finding('mmcv build', NOTE, f'ops load with torch {facts.versions["torch"]}; asking them for '
                             f'their CUDA version failed ({facts.mmcv_cuda_error}), so the RoIAlign runs below '
                             'say whether the kernels work. mmcv\'s collect_env fails the same way',
                             f'if a RoIAlign below fails too, rebuild mmcv: {rebuild}'))
    elif facts.gpu and facts.mmcv_cuda in (None, 'not available'):
        found.append(Finding('mmcv build', PROBLEM, f'a GPU is visible ({facts.gpu}) but mmcv\'s ops were built '
                             'without CUDA (a CPU-only wheel, often one reused from pip\'s cache): RoIAlign on '
                             'the GPU would fail', f'rebuild mmcv with CUDA ops: {rebuild}'))
    elif facts.mmcv_cuda not in (None, 'not available') and facts.torch_cuda and (
            facts.mmcv_cuda.split('.')[0] != facts.torch_cuda.split('.')[0]):
        found.append(Finding('mmcv build', PROBLEM, f'mmcv\'s ops were compiled with CUDA {facts.mmcv_cuda}, '
                             f'torch with CUDA {facts.torch_cuda}', f'rebuild mmcv for this torch: {rebuild}'))
    else:
        kind = 'CPU only' if facts.mmcv_cuda in (None, 'not available') else f'CUDA {facts.mmcv_cuda}'
        found.append(Finding('mmcv build', OK, f'ops load with torch {facts.versions["torch"]} ({kind})'))
    for device, result in facts.roi_align.items():
        result = f'the check {result}' if result.startswith(FAILED) else result
        if result == 'ok':
            found.append(Finding(f'RoIAlign on {device}', OK, 'runs and gives the right value'))
        else:
            hint = (' (no kernel for this GPU: set TORCH_CUDA_ARCH_LIST to its compute capability)'
                    if 'no kernel image' in result else '')
            found.append(Finding(f'RoIAlign on {device}', PROBLEM, result + hint, f'rebuild mmcv: {rebuild}'))
    return found


def report(findings: Sequence[Finding]) -> str:
    """The findings as aligned lines, each problem followed by its fix."""
    width = max(len(f.name) for f in findings)
    lines = []
    for f in findings:
        lines.append(f'{f.name:<{width}}  {f.state:<13}  {f.detail}')
        if f.state in (PROBLEM, ABSENT) and f.fix:
            lines.append(f'{"":<{width}}  {"fix:":<13}  {f.fix}')
    broken = sum(f.state == PROBLEM for f in findings)
    lines.append(f'{broken} problem(s) found' if broken else 'no problems found')
    return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m convnextv2_dense.doctor', description=__doc__.splitlines()[0])
    parser.add_argument('--require-mm', action='store_true',
                        help='an mm package that is not installed is a problem (exit 1), as for `make env`')
    parser.add_argument('--probe', choices=sorted(PROBES), help=argparse.SUPPRESS)  # run_probe's child
    args = parser.parse_args(argv)
    if args.probe:
        print(PROBES[args.probe]())
        return 0
    findings = diagnose(collect(), require_mm=args.require_mm)
    print(report(findings))
    return 1 if any(f.state == PROBLEM for f in findings) else 0


if __name__ == '__main__':
    sys.exit(main())
