"""A checkpoint that does not fit the config's model is refused with the keys and shapes named."""
import pytest
import torch

from convnextv2_dense.inference.model_loading import CheckpointMismatchError, check_fit


def test_every_kind_of_mismatch_is_named():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    state = {'0.weight': torch.zeros(3, 3), 'roi_head.fc.weight': torch.zeros(1),
             **{f'neck.{i}.weight': torch.zeros(1) for i in range(9)}}
    with pytest.raises(CheckpointMismatchError) as err:
        check_fit(model, state, 'ckpt.pth')
    message = str(err.value)
    assert "checkpoint 'ckpt.pth' does not fit the model of the config" in message
    assert '1 tensors missing from the checkpoint: 0.bias' in message
    assert '10 tensors not in the model: roi_head.fc.weight, neck.0.weight' in message
    assert '(by module: roi_head 1, neck 9)' in message
    assert '0.weight: checkpoint (3, 3), model (3, 2)' in message


def test_a_fitting_checkpoint_passes():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    check_fit(model, model.state_dict(), 'ckpt.pth')
