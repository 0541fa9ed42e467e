"""One test per stage-selection rule: together they are the spec of out_features / out_indices."""
import pytest

from convnextv2_dense import ConvNeXtV2
from convnextv2_dense.models.stage_selection import hf_out_features, select_stages, stage_names


def test_default_is_all_four_stages():
    assert select_stages() == ('stage1', 'stage2', 'stage3', 'stage4')


def test_out_indices_use_openmmlab_convention():
    assert select_stages(out_indices=(0, 3)) == ('stage1', 'stage4')


def test_negative_out_indices_count_from_the_end():
    assert select_stages(out_indices=(-3, -1)) == ('stage2', 'stage4')


def test_out_features_take_hf_names_including_the_stem():
    assert select_stages(out_features=['stem', 'stage4']) == ('stem', 'stage4')


def test_both_given_and_agreeing():
    assert select_stages(['stage2', 'stage4'], (1, 3)) == ('stage2', 'stage4')


def test_both_given_and_disagreeing():
    with pytest.raises(ValueError, match='must name the same stages'):
        select_stages(['stage1', 'stage4'], (1, 3))


def test_hf_style_indices_are_not_silently_accepted_as_names():
    # HF's out_indices=(0,) means the stem; ours means stage1: names and indices must agree.
    with pytest.raises(ValueError, match="0 = stage1"):
        select_stages(['stem'], (0,))


@pytest.mark.parametrize('bad', ['stage4', 3, None.__class__])
def test_out_features_must_be_a_list(bad):
    with pytest.raises(ValueError, match='out_features must be a list'):
        select_stages(out_features=bad)


def test_out_features_must_be_known_names():
    with pytest.raises(ValueError, match=r"subset of \['stem', 'stage1'.*'stage5'"):
        select_stages(out_features=['stage1', 'stage5'])


def test_out_features_without_duplicates():
    with pytest.raises(ValueError, match='duplicates'):
        select_stages(out_features=['stage1', 'stage1'])


def test_out_features_in_stage_order():
    with pytest.raises(ValueError, match='stage order'):
        select_stages(out_features=['stage3', 'stage1'])


def test_out_features_not_empty():
    with pytest.raises(ValueError, match='at least one'):
        select_stages(out_features=[])


def test_out_indices_must_be_a_list_or_tuple():
    with pytest.raises(ValueError, match='out_indices must be a list or tuple'):
        select_stages(out_indices=3)


@pytest.mark.parametrize('bad', [(4,), (-5,), (0.5,), (True,)])
def test_out_indices_in_range_and_integers(bad):
    with pytest.raises(ValueError, match=r'integers in \[-4, 3\]'):
        select_stages(out_indices=bad)


def test_out_indices_without_duplicates_after_wrapping():
    with pytest.raises(ValueError, match='duplicates'):
        select_stages(out_indices=(3, -1))


def test_out_indices_in_order():
    with pytest.raises(ValueError, match='stage order'):
        select_stages(out_indices=(2, 0))


def test_out_indices_not_empty():
    with pytest.raises(ValueError, match='at least one'):
        select_stages(out_indices=[])


def test_callers_lists_are_never_changed():
    names, indices = ['stage2', 'stage4'], [-3, -1]
    model = ConvNeXtV2('atto', out_features=names, out_indices=indices)
    assert names == ['stage2', 'stage4'] and indices == [-3, -1]
    assert model.out_indices == (1, 3) and model.out_features == ('stage2', 'stage4')


def test_backbone_raises_the_same_errors():
    with pytest.raises(ValueError, match='out_indices'):
        ConvNeXtV2('atto', out_indices=(0, 4))


# --------------------------------------------------------------------- any number of stages
THREE = ('stem', 'stage1', 'stage2', 'stage3')


def test_stage_names_follow_the_number_of_stages():
    assert stage_names(3) == THREE and stage_names(1) == ('stem', 'stage1')
    with pytest.raises(ValueError, match='num_stages must be a positive integer, got 0'):
        stage_names(0)


def test_rules_are_functions_of_the_stage_names():
    assert select_stages(names=THREE) == ('stage1', 'stage2', 'stage3')
    assert select_stages(out_indices=(-1,), names=THREE) == ('stage3',)
    with pytest.raises(ValueError, match=r'integers in \[-3, 2\] \(0 = stage1, -1 = stage3\)'):
        select_stages(out_indices=(3,), names=THREE)
    with pytest.raises(ValueError, match=r"subset of \['stem', 'stage1', 'stage2', 'stage3'\]"):
        select_stages(out_features=['stage4'], names=THREE)


def test_a_three_stage_backbone_selects_among_its_own_stages():
    model = ConvNeXtV2(depths=(1, 1, 1), dims=(8, 16, 24), out_indices=(-1,))
    assert model.out_features == ('stage3',) and model.out_indices == (2,) and model.strides == (16,)
    with pytest.raises(ValueError, match=r'integers in \[-3, 2\]'):
        ConvNeXtV2(depths=(1, 1, 1), dims=(8, 16, 24), out_indices=(3,))


@pytest.mark.parametrize('hf_indices, names', [([0, 2], ['stem', 'stage2']), ([-1], ['stage3']),
                                               ([1, -2], ['stage1', 'stage2'])])
def test_hf_out_indices_count_the_stem_as_zero(hf_indices, names):
    assert hf_out_features(hf_indices, THREE) == names


def test_hf_out_indices_out_of_range():
    with pytest.raises(ValueError, match=r'HF out_indices must be integers in \[-4, 3\] \(HF convention: 0 = stem'):
        hf_out_features([4], THREE)
