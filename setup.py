"""Install convnextv2_dense. The OpenMMLab stack is optional: see requirements/mminstall.txt."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def requirements(name: str) -> list[str]:
    lines = (HERE / 'requirements' / name).read_text().splitlines()
    return [line.split('#')[0].strip() for line in lines if line.split('#')[0].strip()]


version = {}
for line in (HERE / 'convnextv2_dense' / '__init__.py').read_text().splitlines():
    if line.startswith('__version__'):
        exec(line, version)

setup(
    name='convnextv2_dense',
    version=version['__version__'],
    description='ConvNeXt V2 backbones for detection and segmentation with OpenMMLab',
    long_description=(HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    python_requires='>=3.10',  # zip(strict=...), X | Y at run time; tests/test_setup.py parses every file as 3.10
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'configs.*', 'tools', 'tools.*')),
    install_requires=requirements('runtime.txt'),
    extras_require={
        'mm': requirements('mminstall.txt'),
        'tests': requirements('tests.txt'),
        'optional': requirements('optional.txt'),
    },
    license='MIT',
)
