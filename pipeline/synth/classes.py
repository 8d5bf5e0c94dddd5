"""Generation classes: what the GMM draws one Gaussian for, and the training label each class stands for.

One class per tissue is lab2im's default. A real tissue is not one grey level: cortex is darker at the pial
surface than at the white matter, white matter varies with myelination, CSF mixes with tissue at sulcal
edges. ``synth.subclasses`` splits each tissue into that many classes by 1D k-means of the subject's own
intensities inside it (SynthSeg draws one Gaussian per anatomical label for the same reason), so the
generated texture follows the real one. The training targets stay the tissues: ``targets[c]``.

``synth.structure_classes`` goes one step further where an atlas segmenter named the deep grey structures
(``with_structures``): each structure's GM is a class of its own, so it is drawn with its own intensity, whatever
the tissue's other classes look like. SynthSeg teaches anatomy so: one Gaussian per structure, the target its tissue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.labels import DEEP_GREY, GM, TISSUES

KMEANS_ITERATIONS = 20


@dataclass(frozen=True, eq=False)
class GenerationClasses:
    labels: np.ndarray  # generation classes, on the label map's grid (0: background)
    targets: np.ndarray  # (n_classes,): the training label of each class

    @property
    def n_classes(self) -> int:
        return len(self.targets)


def one_class_per_label(labels: np.ndarray) -> GenerationClasses:
    labels = np.asarray(labels)
    return GenerationClasses(labels, np.arange(int(labels.max(initial=0)) + 1))


def kmeans_1d(values: np.ndarray, k: int) -> np.ndarray:
    """Cluster index (0 = darkest) of each value: Lloyd's algorithm from the quantiles (deterministic)."""
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(KMEANS_ITERATIONS):
        assignment = np.abs(values[:, None] - centres[None]).argmin(axis=1)
        updated = np.array([values[assignment == j].mean() if np.any(assignment == j) else centres[j]
                            for j in range(k)])
        if np.allclose(updated, centres):
            break
        centres = updated
    order = np.argsort(np.argsort(centres))  # rank of each centre: darkest first
    return order[np.abs(values[:, None] - centres[None]).argmin(axis=1)]


def split_tissues(labels: np.ndarray, image: np.ndarray, subclasses: int) -> GenerationClasses:
    """Tissue t (1..3) becomes classes 1 + (t-1)*subclasses ... t*subclasses, darkest first."""
    if subclasses == 1:
        return one_class_per_label(labels)
    labels = np.asarray(labels)
    classes = np.zeros(labels.shape, np.uint8)
    for tissue in TISSUES:
        inside = labels == tissue
        first = 1 + (tissue - 1) * subclasses
        if inside.sum() >= subclasses:
            classes[inside] = first + kmeans_1d(np.asarray(image, dtype=np.float64)[inside], subclasses)
        else:
            classes[inside] = first
    targets = np.concatenate([[0], np.repeat(list(TISSUES), subclasses)])
    return GenerationClasses(classes, targets)


def with_structures(classes: GenerationClasses, structures: np.ndarray) -> GenerationClasses:
    """``classes`` with the GM of each deep grey structure in ``structures`` (FreeSurfer labels, same grid) as a class
    of its own, numbered after the others in ``DEEP_GREY``'s order; its target GM."""
    labels, targets = classes.labels.copy(), list(classes.targets)
    grey = np.asarray(classes.targets)[classes.labels] == GM
    for structure in DEEP_GREY:
        inside = grey & (structures == structure)
        if inside.any():
            labels[inside] = len(targets)
            targets.append(GM)
    return GenerationClasses(labels, np.asarray(targets))
