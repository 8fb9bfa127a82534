"""Write the store-v1 fixture with the clipindex of commit beacc4a (store format 1).

Run from the repository root, with the OLD code first on the path::

    git worktree add /tmp/old beacc4a
    rm -rf tests/data/store-v1/colors tests/data/store-v1/indexes
    PYTHONPATH=/tmp/old .venv/bin/python tests/data/store-v1/make_store.py

It writes ``colors/`` (a 3-class folder source: 12 small JPEGs, one of them truncated,
and a ``captions.csv``) and ``indexes/colors/`` (the store of that folder with the
shipped ``tiny-vit`` backbone, exact flat index, float32). Deterministic: the pixels
come from a seeded generator.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
CLASSES = ("red", "green", "blue")
PER_CLASS = 4
TRUNCATED = "blue/03.jpg"  # kept as a skipped row (image_valid False)


def write_source(root: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            arr = rng.integers(0, 90, size=(24 + 2 * i, 32, 3), dtype=np.uint8)
            arr[..., c] = np.clip(arr[..., c].astype(int) + 150, 0, 255)
            rel = f"{name}/{i:02d}.jpg"
            Image.fromarray(arr).save(root / rel, quality=85)
            rows.append((rel, f"a {name} square number {i}"))
            if i % 2 == 0:
                rows.append((rel, f"a small {name} picture"))
    data = (root / TRUNCATED).read_bytes()
    (root / TRUNCATED).write_bytes(data[: len(data) // 3])
    with open(root / "captions.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "caption"])
        writer.writerows(rows)


def main() -> None:
    import clipindex
    from clipindex.store import build_store

    print("clipindex", clipindex.__version__, "from", Path(clipindex.__file__).parent)
    os.chdir(HERE)
    write_source(Path("colors"))
    build_store("colors", ["tiny-vit"], out="indexes", workers=0, batch_size=4,
                progress=False)


if __name__ == "__main__":
    main()
