"""Model names of model-index.yml stand for their configs in tools/infer.py."""
from pathlib import Path

import pytest

from convnextv2_dense.inference.model_names import model_configs, resolve_config
from convnextv2_dense.inference.sources import InferenceInputError

REPO = Path(__file__).resolve().parents[2]


def test_every_name_of_the_index_is_a_config_of_the_same_name():
    models = model_configs()
    assert 'upernet_convnextv2_tiny_ade20k' in models and 'mask-rcnn_convnextv2_tiny_fpn_1x_coco' in models
    for name, config in models.items():
        assert config.is_file() and config.stem == name, (name, config)


def test_a_name_resolves_and_a_file_stays_itself():
    assert Path(resolve_config('upernet_convnextv2_base_ade20k')) == REPO / 'configs/upernet_convnextv2_base_ade20k.py'
    demo = 'configs/demo/upernet_convnextv2_atto_demo.py'  # not in the zoo, but a file
    assert resolve_config(demo) == demo


@pytest.mark.parametrize('given', ['upernet_convnextv2_base_ade20', 'configs/upernet_convnextv2_base_ade20.py'])
def test_a_near_miss_names_the_closest_models(given):
    with pytest.raises(InferenceInputError, match=r"config file not found: .*come close: upernet_convnextv2_base_ade20k"):
        resolve_config(given)


def test_nothing_close_says_where_names_are_listed():
    with pytest.raises(InferenceInputError, match='nor is it a model name'):
        resolve_config('no_such_thing')


def test_infer_takes_a_model_name_and_goes_on_to_the_checkpoint(tmp_path, load_tool, capsys):
    pytest.importorskip('mmseg')
    image = tmp_path / 'a.png'
    from PIL import Image
    Image.new('RGB', (32, 32)).save(image)
    assert load_tool('infer').main(['upernet_convnextv2_atto_ade20k', str(tmp_path / 'missing.pth'),
                                    str(image), '--device', 'cpu']) == 1
    assert "checkpoint not found: " in capsys.readouterr().err
