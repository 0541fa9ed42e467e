"""Bad input gets one ``error: ...`` line naming the file, key or value, and exit status 1, from the tools."""
import shutil

import pytest
import torch

from convnextv2_dense import ConvNeXtV2

from .helpers import REPO, det_options, run_tool, seg_options

SEG = 'configs/demo/upernet_convnextv2_atto_demo.py'
DET = 'configs/demo/mask-rcnn_convnextv2_atto_demo.py'


def error_line(proc) -> str:
    """The one ``error:`` line of a failed tool run (and no traceback)."""
    assert proc.returncode == 1, f'{proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}'
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def train(tmp_path, ade_root, *extra, **options):
    return run_tool('tools/train.py', SEG, '--work-dir', tmp_path / 'wd', *extra,
                    *seg_options(ade_root, **{'train_cfg.max_iters': 1, **options}), check=False)


def test_a_config_with_a_syntax_error(tmp_path):
    config = tmp_path / 'broken.py'
    config.write_text(f"_base_ = '{REPO / SEG}'\nmodel = dict(backbone=dict(arch='atto')\n")
    line = error_line(run_tool('tools/train.py', config, '--work-dir', tmp_path / 'wd', check=False))
    assert str(config) in line and 'line' in line


def test_the_debug_switch_shows_the_traceback(tmp_path):
    config = tmp_path / 'broken.py'
    config.write_text('model = dict(\n')
    proc = run_tool('tools/train.py', config, '--debug', '--work-dir', tmp_path / 'wd', check=False)
    assert proc.returncode == 1 and 'Traceback' in proc.stderr and 'SyntaxError' in proc.stderr


@pytest.mark.parametrize('option, named', [
    ('model.backbone.arch=giant', "unknown ConvNeXt V2 arch 'giant'"),
    ('model.backbone.out_indices=(0,5)', '[5] invalid'),
    ('model.backbone.out_features=[stem,stage9]', "['stage9'] unknown"),
])
def test_a_bad_backbone_option(tmp_path, ade_root, option, named):
    key, value = option.split('=')
    assert named in error_line(train(tmp_path, ade_root, **{key: value}))


def test_a_missing_dataset_root_is_named_before_the_model_is_built(tmp_path, ade_root):
    proc = train(tmp_path, ade_root, **{'train_dataloader.dataset.data_root': tmp_path / 'nowhere'})
    line = error_line(proc)
    assert f"train_dataloader.dataset.data_root: folder '{tmp_path / 'nowhere'}' does not exist" in line
    assert 'Environment info' not in proc.stdout + proc.stderr  # the runner was never built


def test_a_missing_annotation_file_is_named(tmp_path, coco_root):
    (tmp_path / 'any.pth').write_bytes(b'')
    proc = run_tool('tools/test.py', DET, tmp_path / 'any.pth', '--work-dir', tmp_path / 'wd',
                    *det_options(coco_root, **{'test_dataloader.dataset.ann_file': 'annotations/nope.json'}),
                    check=False)
    line = error_line(proc)
    assert f"test_dataloader.dataset.ann_file: file '{coco_root}/annotations/nope.json' does not exist" in line


def test_a_missing_image_is_named(tmp_path, coco_root):
    # COCO's json lists its images (ADE20K's dataset lists the files it finds, so a lost one just is not seen)
    root = tmp_path / 'coco'
    shutil.copytree(coco_root, root)
    image = sorted((root / 'train2017').iterdir())[0]
    image.unlink()
    proc = run_tool('tools/train.py', DET, '--work-dir', tmp_path / 'wd',
                    *det_options(root, **{'train_cfg.max_epochs': 1}), check=False)
    line = error_line(proc)
    assert f'cannot load or transform the sample {image}: FileNotFoundError' in line


def test_an_unreadable_image_is_named_from_a_dataloader_worker(tmp_path, ade_root, seg_checkpoint):
    root = tmp_path / 'ade'
    shutil.copytree(ade_root, root)
    image = sorted((root / 'images' / 'validation').iterdir())[1]
    image.write_bytes(b'\x89PNG but not really')
    proc = run_tool('tools/test.py', SEG, seg_checkpoint, '--work-dir', tmp_path / 'wd',
                    *seg_options(root, **{'test_dataloader.num_workers': 1}), check=False)
    line = error_line(proc)
    assert f'cannot load or transform the sample {image} + ' in line


@pytest.fixture
def pretrained_files(tmp_path):
    atto = tmp_path / 'atto.pth'
    torch.save(ConvNeXtV2('atto').state_dict(), atto)
    femto = tmp_path / 'femto.pth'
    torch.save(ConvNeXtV2('femto').state_dict(), femto)
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(atto.read_bytes()[:atto.stat().st_size // 2])
    text = tmp_path / 'notes.pth'
    text.write_text('not a checkpoint\n')
    return {'missing': (tmp_path / 'nope.pth', 'does not exist'), 'other arch': (femto, 'femto'),
            'truncated': (cut, 'truncated'), 'not a checkpoint': (text, 'not a checkpoint')}


@pytest.mark.parametrize('case', ['missing', 'other arch', 'truncated', 'not a checkpoint'])
def test_a_bad_pretrained_checkpoint(tmp_path, ade_root, pretrained_files, case):
    path, named = pretrained_files[case]
    config = tmp_path / 'pretrained.py'
    config.write_text(f"_base_ = '{REPO / SEG}'\nmodel = dict(backbone=dict(init_cfg=dict(\n"
                      f"    _delete_=True, type='Pretrained', checkpoint='{path}')))\n")
    proc = run_tool('tools/train.py', config, '--work-dir', tmp_path / 'wd',
                    *seg_options(ade_root, **{'train_cfg.max_iters': 1}), check=False)
    line = error_line(proc)
    assert str(path) in line and named in line


def test_a_checkpoint_with_another_number_of_classes(tmp_path, ade_root, seg_checkpoint):
    proc = run_tool('tools/test.py', SEG, seg_checkpoint, '--work-dir', tmp_path / 'wd',
                    *seg_options(ade_root, **{'model.decode_head.num_classes': 7,
                                              'model.auxiliary_head.num_classes': 7}), check=False)
    line = error_line(proc)
    assert str(seg_checkpoint) in line and 'another number of classes' in line
    assert 'decode_head.conv_seg.weight: checkpoint (5, 64, 1, 1), model (7, 64, 1, 1)' in line


def test_a_non_finite_loss_stops_training_and_keeps_the_last_checkpoint(tmp_path, ade_root, seg_checkpoint):
    work_dir = tmp_path / 'wd'
    shutil.copytree(seg_checkpoint.parent, work_dir)
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'iter_2.pth'))
    before = (work_dir / 'iter_2.pth').read_bytes()
    proc = run_tool('tools/train.py', SEG, '--work-dir', work_dir, '--resume', *seg_options(
        ade_root, **{'train_cfg.max_iters': 4, 'default_hooks.checkpoint.interval': 1,
                     'model.decode_head.loss_decode.loss_weight': 'nan'}), check=False)
    line = error_line(proc)
    assert 'iteration 3: the loss is not finite' in line and 'decode.loss_ce=nan' in line
    assert f'the last checkpoint, {work_dir / "iter_2.pth"}, is kept' in line
    assert not (work_dir / 'iter_3.pth').exists() and (work_dir / 'iter_2.pth').read_bytes() == before
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / 'iter_2.pth')
