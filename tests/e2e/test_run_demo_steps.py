"""tools/run_demo.py's own steps, on the e2e fixtures (the whole demo is minutes: `make demo` runs it)."""
from pathlib import Path

from convnextv2_dense.data import make_demo_data


def test_demo_images_are_found_where_make_demo_data_writes_them(tmp_path, monkeypatch, load_tool):
    run_demo = load_tool('run_demo')
    make_demo_data(tmp_path / run_demo.DEMO_DATA, num_train=1, num_val=2, size=32, seed=0, log=None)
    monkeypatch.setattr(run_demo, 'REPO_ROOT', str(tmp_path))
    for task in ('seg', 'det'):
        images = run_demo.demo_images(task)
        assert len(images) == 2 and all(Path(image).is_file() for image in images), (task, images)


def test_infer_and_features_step_writes_its_pictures(seg_checkpoint, ade_root, tmp_path, load_tool):
    run_demo = load_tool('run_demo')
    images = sorted(str(p) for p in (Path(ade_root) / 'images' / 'validation').glob('*.jpg'))[:2]
    lines = run_demo.infer_and_features('configs/demo/upernet_convnextv2_atto_demo.py', str(seg_checkpoint),
                                        images, str(tmp_path))
    assert (tmp_path / 'features.png').is_file()
    assert len(list((tmp_path / 'infer' / 'overlays').glob('*.png'))) == 2
    assert 'tools/infer.py on 2 images' in lines[0] and 'features.png' in lines[1]
