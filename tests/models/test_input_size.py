"""An input smaller than the total stride of the selected stages is a ValueError naming both sizes."""
import pytest
import torch

from convnextv2_dense import ConvNeXtV2


@pytest.mark.parametrize('out_indices, minimum', [((0, 1, 2, 3), 32), ((0, 1, 2), 16), ((0,), 4)])
def test_the_minimum_is_the_stride_of_the_last_selected_stage(out_indices, minimum):
    model = ConvNeXtV2('atto', out_indices=out_indices).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, minimum, minimum + 3))  # exactly the minimum runs
        assert outs[-1].shape[-2] == 1
        with pytest.raises(ValueError, match=rf'input of size {minimum - 1}x{minimum + 3} is smaller than the '
                                             rf'total stride .* at least {minimum}x{minimum} pixels'):
            model(torch.randn(1, 3, minimum - 1, minimum + 3))


def test_the_width_is_checked_too():
    with pytest.raises(ValueError, match='input of size 64x20 .* at least 32x32'):
        ConvNeXtV2('atto')(torch.randn(1, 3, 64, 20))
