"""The library's option values that the commands' ``--help`` lists, spelled out here.

``clipindex --help`` and every command's ``--help`` import only click and this module:
the library (torch, FAISS, scikit-learn, pandas) loads when a command runs, not when it
is parsed. Each name below mirrors the library constant in its comment, and
``tests/test_cli_imports.py`` checks that they are equal, so they cannot drift apart.
"""

from __future__ import annotations

#: clipindex.bench.PROTOCOLS
BENCH_PROTOCOLS = ("same-rows", "study")
#: clipindex.classifiers.runner.METHODS
CLASSIFY_METHODS = ("prompt", "prototype", "caption-knn", "image-knn", "linear-probe", "mlp")
#: clipindex.classifiers.runner.ENSEMBLES
ENSEMBLES = ("majority", "soft")
#: clipindex.classifiers.KNN_WEIGHTS
KNN_WEIGHTS = ("uniform", "similarity")
#: clipindex.classifiers.templates.TEMPLATE_SETS (its keys)
TEMPLATE_SETS = ("default", "imagenet")
#: clipindex.encode.DECODES (build --decode, add --decode)
DECODES = ("pil", "nvjpeg", "draft")
#: clipindex.demo.DEMO_PER_CLASS (its keys, sorted)
DEMO_SCALES = ("default", "small")
#: clipindex.search.dedup.DEFAULT_THRESHOLD
DEDUP_THRESHOLD = 0.9975
#: clipindex.explain.METHODS (its keys, sorted)
EXPLAIN_METHODS = ("prompt", "prototype")
#: clipindex.report.PROJECTIONS (sorted)
PROJECTIONS = ("pca", "tsne", "umap")
#: clipindex.search.TARGETS
SEARCH_TARGETS = ("images", "captions")
#: clipindex.demo.world.SCALES (its keys, sorted)
WORLD_SCALES = ("default", "small", "training")
#: clipindex.encode.tuning.CPU_BATCH_GFLOPS, CPU_BATCH_RANGE
CPU_BATCH_GFLOPS, CPU_BATCH_RANGE = 384, (8, 256)
#: clipindex.encode.tuning.CUDA_BATCH_GFLOPS, CUDA_BATCH_RANGE
CUDA_BATCH_GFLOPS, CUDA_BATCH_RANGE = 131072, (32, 1024)
#: clipindex.encode.tuning.DEFAULT_TEXT_BATCH_SIZE (cpu, cuda)
TEXT_BATCH_SIZES = (256, 1024)
#: clipindex.index.tuning.DEFAULT_TARGET_RECALL (build --target-recall)
TARGET_RECALL = 0.95
