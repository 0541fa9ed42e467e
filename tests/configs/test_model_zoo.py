"""model-index.yml, configs/metafile-*.yml and the README's configs table (dev/model_zoo.py).

The metafiles say what the configs say, the README table is made from the metafiles, every parameter
count is the built model's, and the FLOPs of the smallest arch are counted again.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def zoo():
    spec = importlib.util.spec_from_file_location('model_zoo', REPO / 'dev' / 'model_zoo.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def models_in_metafiles(zoo) -> dict[str, dict]:
    index = yaml.safe_load((REPO / 'model-index.yml').read_text())
    models = {}
    for metafile in index['Import']:
        doc = yaml.safe_load((REPO / metafile).read_text())
        collections = {c['Name'] for c in doc['Collections']}
        for model in doc['Models']:
            assert model['In Collection'] in collections, model['Name']
            models[model['Name']] = model
    return models


def test_model_index_imports_one_metafile_per_family(zoo):
    index = yaml.safe_load((REPO / 'model-index.yml').read_text())
    assert index['Import'] == [family.metafile for family in zoo.FAMILIES]


def test_metafiles_list_every_released_config_once(zoo):
    assert sorted(models_in_metafiles(zoo)) == sorted(p.stem for p in zoo.released_configs())


def test_metafiles_and_model_index_are_what_the_configs_say(zoo, capsys):
    assert zoo.main(['metafiles', '--check']) == 0, capsys.readouterr().out


def test_readme_table_is_made_from_the_metafiles(zoo, capsys):
    assert zoo.main(['readme', '--check']) == 0, capsys.readouterr().out


def test_each_entry_names_its_config_and_backbone_checkpoint(zoo):
    for name, model in models_in_metafiles(zoo).items():
        cfg = zoo.load(REPO / model['Config'])
        assert model['Config'] == f'configs/{name}.py'
        assert model['Metadata']['Pretrained'] == cfg.model.backbone.init_cfg.checkpoint
        assert model['Metadata']['Backbone'].lower().endswith(cfg.model.backbone.arch)


def test_published_results_are_the_papers_and_only_where_it_published(zoo):
    models = models_in_metafiles(zoo)
    with_results = {name for name, model in models.items() if 'Results' in model}
    assert with_results == set(zoo.PAPER)
    for name in with_results:
        model = models[name]
        assert model['Results Source'].startswith('the paper')
        assert {m: v for r in model['Results'] for m, v in r['Metrics'].items()} == zoo.PAPER[name]
        assert '/pt_only/' in model['Metadata']['Pretrained'] or model['In Collection'] == zoo.UPERNET.collection


def test_parameter_counts_are_the_built_models(zoo):
    for name, model in models_in_metafiles(zoo).items():
        cfg = zoo.load(REPO / model['Config'])
        assert model['Metadata']['Parameters'] == zoo.count_parameters(cfg), name


@pytest.mark.parametrize('name', ['upernet_convnextv2_atto_ade20k', 'mask-rcnn_convnextv2_atto_fpn_1x_coco'])
def test_flops_of_the_smallest_arch_counted_again(zoo, name):
    model = models_in_metafiles(zoo)[name]
    cfg = zoo.load(REPO / model['Config'])
    family = zoo.family_of(cfg, REPO / model['Config'])
    assert model['Metadata']['FLOPs Input'] == '{}x{}'.format(*family.flops_input)
    assert zoo.count_flops(cfg, family) == pytest.approx(model['Metadata']['FLOPs'], rel=1e-3)
