"""Synthetic demo datasets in the ADE20K and COCO layouts (numpy, Pillow and pycocotools only)."""
from .drawing import SHAPE_KINDS, Scene, Shape, draw_scene, label_map
from .synthetic import (DEMO_DET_CLASSES, DEMO_SEG_ADE_IDS, DEMO_SEG_CLASSES, DEMO_SEG_SHAPES, DemoResult,
                        make_ade_demo, make_coco_demo, make_demo_data)

__all__ = ['DEMO_DET_CLASSES', 'DEMO_SEG_ADE_IDS', 'DEMO_SEG_CLASSES', 'DEMO_SEG_SHAPES', 'DemoResult',
           'SHAPE_KINDS', 'Scene', 'Shape', 'draw_scene', 'label_map', 'make_ade_demo', 'make_coco_demo',
           'make_demo_data']
