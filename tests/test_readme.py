"""README.md points only at files that exist: its relative links and the repo paths its commands name."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / 'README.md').read_text(encoding='utf-8')

LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')       # [text](target "title")
EXTERNAL = re.compile(r'^(?:[a-z][a-z0-9+.-]*:|#)', re.IGNORECASE)  # http:, https:, mailto:, #anchor
CONFIG_PATH = re.compile(r'(?<![\w./-])(configs/[\w./-]+?\.py)\b')
REPO_FILE = re.compile(r'(?<![\w./-])((?:tools|requirements|docs)/[\w./-]+?\.(?:py|sh|txt|md))\b')


def relative_links(text: str = README) -> list[str]:
    """Targets of the Markdown links in ``text`` that point inside the repo, anchors dropped."""
    return sorted({m.group(1).split('#')[0] for m in LINK.finditer(text) if not EXTERNAL.match(m.group(1))})


def mentioned(pattern: re.Pattern, text: str = README) -> list[str]:
    """Repo paths ``pattern`` finds in ``text`` (commands and prose, links or not)."""
    return sorted(set(pattern.findall(text)))


def test_readme_names_configs():
    # the checks below would pass vacuously if the patterns stopped matching
    assert 'configs/upernet_convnextv2_base_ade20k.py' in mentioned(CONFIG_PATH)


@pytest.mark.parametrize('target', relative_links())
def test_relative_link_exists(target):
    assert (REPO / target).exists()


@pytest.mark.parametrize('path', mentioned(CONFIG_PATH))
def test_mentioned_config_exists(path):
    assert (REPO / path).is_file()


@pytest.mark.parametrize('path', mentioned(REPO_FILE))
def test_mentioned_tool_or_requirements_file_exists(path):
    assert (REPO / path).is_file()


def test_link_extraction_keeps_repo_links_only():
    sample = '[a](https://x.org/y) [b](docs/guide.md#part) [c](#top) [d](configs/x.py "t") [e](mailto:a@b.c)'
    assert relative_links(sample) == ['configs/x.py', 'docs/guide.md']


def test_path_extraction_finds_configs_and_tools_in_commands():
    sample = ('python tools/train.py configs/a_b.py --cfg-options x=1\n'
              'see requirements/optional.txt, not myconfigs/d.py or upstream/configs/e.py')
    assert mentioned(CONFIG_PATH, sample) == ['configs/a_b.py']
    assert mentioned(REPO_FILE, sample) == ['requirements/optional.txt', 'tools/train.py']
