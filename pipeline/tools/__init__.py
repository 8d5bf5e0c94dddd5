"""Tool wrappers behind one small interface (``base.Tool``; ``stripping.Stripper``, ``segmentation.Segmenter``).

The registries of the methods each stage can use are in ``registry``; importing this package loads no tool,
so a stage depends (in dvc.yaml) only on the wrappers it imports.
"""
