"""Property-based tests (hypothesis, issue 18): configs, manifests and CLI arguments of
any shape (unicode, very long, empty, negative, huge) never produce a traceback: either a
result, or a :class:`~clipindex.errors.ClipindexError` (on the CLI: exit 2 with one
``Error:`` line).

Bounded and seeded for CI: every property runs a fixed number of examples
(``derandomize=True``: the same examples on every run, no example database).
"""

from __future__ import annotations

import json
import math
import shutil
import string
from pathlib import Path

import pytest
from fixtures_robust import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipindex.config import DatasetConfig, build_config, load_bench_config, load_dataset_config
from clipindex.errors import ClipindexError

# A failing example may hold a 100,000-character text: report it, not a repr warning.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")

BOUNDED = settings(max_examples=40, derandomize=True, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture,
                                          HealthCheck.too_slow])
CLI = settings(BOUNDED, max_examples=15)

HUGE = 10**30
numbers = st.one_of(st.integers(-HUGE, HUGE), st.integers(-3, 3),
                    st.floats(allow_nan=True, allow_infinity=True))
texts = st.one_of(st.text(max_size=30), st.text(alphabet=string.printable, max_size=8),
                  st.just(""), st.just("long " * 20_000), st.just("\u0000\ud7ff\U0001f600"))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8)
FIELDS = [f for f in DatasetConfig.__dataclass_fields__]


def _one_line_or_result(res) -> None:
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exc_info
    assert "Traceback" not in res.output + res.stderr
    if res.exit_code != 0:
        assert res.exit_code == 2, (res.exit_code, res.output)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr


# ----------------------------------------------------------------------------- configs
@BOUNDED
@given(st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=10)), values,
                       max_size=8))
def test_any_dataset_mapping_is_a_config_or_a_config_error(mapping):
    try:
        cfg = build_config(DatasetConfig, mapping, "fuzz.yaml")
    except ClipindexError:
        return
    assert isinstance(cfg, DatasetConfig)


@BOUNDED
@given(st.one_of(st.text(max_size=200),
                 st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                 st.dictionaries(st.text(max_size=10), values, max_size=6).map(
                     lambda d: json.dumps(d, default=str))))
def test_any_yaml_text_loads_or_is_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    for load in (load_dataset_config, load_bench_config):
        try:
            load(path)
        except ClipindexError:
            pass


# ----------------------------------------------------------------------------- manifests
@pytest.fixture(scope="module")
def fuzz_store(colors_store: Path, tmp_path_factory) -> Path:
    ddir = tmp_path_factory.mktemp("fuzz") / "indexes" / "colors"
    shutil.copytree(colors_store, ddir)
    return ddir


def _mutate(manifest: dict, key: str, value) -> dict:
    out = dict(manifest)
    if value is _DROP:
        out.pop(key, None)
    else:
        out[key] = value
    return out


_DROP = object()


@BOUNDED
@given(data=st.data())
def test_any_manifest_opens_or_is_one_error(fuzz_store, data):
    from clipindex.store import open_index, store_info

    path = fuzz_store / "tiny-vit" / "manifest.json"
    original = path.read_bytes()
    manifest = json.loads(original)
    choice = data.draw(st.sampled_from(["mutate", "any-json", "bytes"]))
    if choice == "mutate":
        key = data.draw(st.one_of(st.sampled_from(sorted(manifest)), st.text(max_size=8)))
        value = data.draw(st.one_of(values, st.just(_DROP)))
        content = json.dumps(_mutate(manifest, key, value), default=str).encode()
    elif choice == "any-json":
        content = json.dumps(data.draw(values), default=str).encode()
    else:
        content = data.draw(st.binary(max_size=300))
    try:
        path.write_bytes(content)
        for call in (lambda: open_index(fuzz_store, "tiny-vit"), lambda: store_info(fuzz_store)):
            try:
                call()
            except ClipindexError:
                pass
    finally:
        path.write_bytes(original)


# ----------------------------------------------------------------------------- the CLI
@CLI
@given(k=numbers, shots=st.one_of(st.none(), st.integers(-5, HUGE)),
       seed=st.integers(-HUGE, HUGE), method=st.sampled_from(
           ["prompt", "image-knn", "caption-knn", "prototype", "linear-probe"]),
       classes=st.one_of(st.none(), texts), reject=st.one_of(st.none(), numbers))
def test_classify_arguments_never_trace(fuzz_store, k, shots, seed, method, classes, reject):
    args = ["classify", "--index", fuzz_store, "--backbone", "tiny-vit", "--method", method,
            "--k", k, "--seed", seed, "--json"]
    if shots is not None:
        args += ["--shots", shots]
    if classes is not None:
        args += ["--classes", classes]
    if reject is not None:
        args += ["--reject-below", reject]
    _one_line_or_result(run_cli(*args))


@CLI
@given(query=texts, k=numbers, where=st.lists(texts, max_size=2),
       target=st.sampled_from(["images", "captions"]))
def test_search_arguments_never_trace(fuzz_store, query, k, where, target):
    args = ["search", query, "--index", fuzz_store, "--backbone", "tiny-vit", "-k", k,
            "--to", target, "--json"]
    for w in where:
        args += ["--where", w]
    res = run_cli(*args)
    _one_line_or_result(res)
    if res.exit_code == 0:
        hits = json.loads(res.stdout)
        assert isinstance(hits, list)
        assert all(math.isfinite(h["score"]) for h in hits)


@CLI
@given(backbone=texts, flags=st.lists(st.sampled_from(["--json", "--verify"]), max_size=2))
def test_info_and_backbone_names_never_trace(fuzz_store, backbone, flags):
    _one_line_or_result(run_cli("info", *flags, fuzz_store))
    _one_line_or_result(run_cli("search", "a red picture", "--index", fuzz_store,
                                "--backbone", backbone))
