"""predictions.json ids: numeric file names, sequential numbers, or a COCO annotation file's ids."""
import json

import numpy as np
import pytest

from convnextv2_dense.inference.coco_results import CocoResults
from convnextv2_dense.inference.sources import InferenceInputError, Source


def _add_one(results, path):
    image_id = results.image_id(path, 'x', False)
    mask = np.zeros((1, 4, 5), bool)
    mask[0, 1:3, 1:4] = True
    results.add(image_id, path, np.array([[1.0, 1, 4, 3]]), np.array([1]), np.array([0.75]), mask)
    return image_id


def test_numeric_file_names_keep_their_number(tmp_path):
    sources = [Source('a/000000000139.jpg', '000000000139'), Source('a/000000000285.jpg', '000000000285')]
    results = CocoResults(sources, ['cat', 'dog'])
    assert _add_one(results, sources[1].path) == 285
    entry = results.entries[0]
    assert entry['category_id'] == 2 and entry['category_name'] == 'dog'
    assert entry['bbox'] == [1.0, 1.0, 3.0, 2.0] and entry['segmentation']['size'] == [4, 5]
    path = results.write(str(tmp_path / 'p.json'))
    assert json.load(open(path))[0]['image_id'] == 285


def test_other_names_are_numbered_in_order():
    sources = [Source('x/cat.jpg', 'cat'), Source('x/7.jpg', '7')]
    results = CocoResults(sources, ['cat'])
    assert [results.image_id(s.path, s.name, False) for s in sources] == [1, 2]


def test_annotation_file_gives_image_and_category_ids(tmp_path):
    ann = tmp_path / 'ann.json'
    ann.write_text(json.dumps({'images': [{'id': 42, 'file_name': 'val/pic.jpg'}],
                               'categories': [{'id': 7, 'name': 'dog'}, {'id': 3, 'name': 'cat'}]}))
    results = CocoResults([Source('mine/pic.jpg', 'pic')], ['cat', 'dog'], str(ann))
    assert _add_one(results, 'mine/pic.jpg') == 42
    assert results.entries[0]['category_id'] == 7
    with pytest.raises(InferenceInputError, match='other.jpg.* is not an image of the annotation file'):
        CocoResults([Source('mine/pic.jpg', 'pic'), Source('mine/other.jpg', 'other')], ['cat'], str(ann))


def test_annotation_file_without_a_model_class_is_an_error(tmp_path):
    ann = tmp_path / 'ann.json'
    ann.write_text(json.dumps({'images': [], 'categories': [{'id': 1, 'name': 'cat'}]}))
    with pytest.raises(InferenceInputError, match=r"no category named \['bird'\]"):
        CocoResults([], ['cat', 'bird'], str(ann))
