"""Whole-slide image reading, tissue segmentation and tiling."""
