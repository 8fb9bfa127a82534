"""Grad-CAM explanations: where in an image a CLIP backbone sees a class.

- :mod:`clipindex.explain.cam`: the Grad-CAM map itself (:func:`explain`), the default
  layer per visual tower type and layer lookup by name;
- :mod:`clipindex.explain.pictures`: overlays, captioned panels, the box-mass score;
- :mod:`clipindex.explain.runs`: class vectors from a store, one image
  (:func:`explain_image`), rows of a store (:func:`explain_rows`) and the errors of a
  benchmark run (:func:`explain_errors`).

Example
-------
>>> from clipindex.explain import explain, overlay              # doctest: +SKIP
>>> cam = explain("cat.jpg", encoder, class_vector)             # doctest: +SKIP
>>> overlay("cat.jpg", cam).save("cat_cam.png")                 # doctest: +SKIP
"""

from __future__ import annotations

from clipindex.explain.cam import (
    DEFAULT_LAYERS,
    MIN_CAM_GRID,
    PREFERRED_LAYERS,
    SimilarityTarget,
    default_layer,
    explain,
    image_embedding,
    load_image,
    resolve_layer,
)
from clipindex.explain.pictures import box_mass, gradcam_panel, overlay
from clipindex.explain.runs import (
    METHODS,
    ClassVectors,
    Explanation,
    class_vectors,
    explain_errors,
    explain_image,
    explain_rows,
    save_png,
    write_explanation,
)

__all__ = [
    "DEFAULT_LAYERS",
    "METHODS",
    "MIN_CAM_GRID",
    "PREFERRED_LAYERS",
    "ClassVectors",
    "Explanation",
    "SimilarityTarget",
    "box_mass",
    "class_vectors",
    "default_layer",
    "explain",
    "explain_errors",
    "explain_image",
    "explain_rows",
    "gradcam_panel",
    "image_embedding",
    "load_image",
    "overlay",
    "resolve_layer",
    "save_png",
    "write_explanation",
]
