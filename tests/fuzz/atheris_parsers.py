"""Coverage-guided fuzzing of the config and manifest parsers with atheris (optional,
outside CI; CI runs the bounded hypothesis properties of ``tests/test_properties.py``).

    pip install atheris
    PYTHONPATH=. python tests/fuzz/atheris_parsers.py -atheris_runs=100000

Each input is written as a dataset YAML config and as a backbone folder's
``manifest.json``; anything but a result or a ``ClipindexError`` is a finding.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def main() -> None:
    import atheris

    with atheris.instrument_imports():
        from clipindex.config import load_dataset_config
        from clipindex.errors import ClipindexError
        from clipindex.store.manifest import read_manifest

    work = Path(tempfile.mkdtemp(prefix="clipindex-fuzz-"))
    (work / "b").mkdir()

    def one(data: bytes) -> None:
        (work / "c.yaml").write_bytes(data)
        (work / "b" / "manifest.json").write_bytes(data)
        for call in (lambda: load_dataset_config(work / "c.yaml"),
                     lambda: read_manifest(work / "b")):
            try:
                call()
            except ClipindexError:
                pass

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
