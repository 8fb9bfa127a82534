"""Friction fixes of #37 item 4, each through the CLI on a small store of stand-in
encoders (fixtures_store): ``search`` without ``--backbone`` fuses every backbone,
``--where label==cow`` is refused, ``report STORE`` says it is a store, ``classify
--ensemble`` with one backbone is refused, and ``info`` shows every index kind's knobs
and recall. (``explain``'s stored label is tested in tests/test_explain.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures_robust import assert_one_line_error
from fixtures_store import install_fakes, make_image_dataset

from clipindex.cli import main

KW = {"batch_size": 8, "progress": False, "workers": 0}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Dataset folders: ``pair`` (fake-a + fake-b, auto), ``one`` (fake-a, flat), ``ivf`` and
    ``hnsw`` (fake-a with that index kind asked for explicitly)."""
    from clipindex.store import build_store

    root = tmp_path_factory.mktemp("friction")
    ds = make_image_dataset(root / "data", n_per_class=15)
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        install_fakes(mp)
        out["pair"] = build_store(ds, ["fake-a", "fake-b"], out=root / "pair", **KW)[0].parent
        out["one"] = build_store(ds, ["fake-a"], out=root / "one", index_kind="flat",
                                 **KW)[0].parent
        for kind in ("ivf", "hnsw"):
            out[kind] = build_store(ds, ["fake-a"], out=root / kind, index_kind=kind,
                                    **KW)[0].parent
    return out


def _cli(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


# ----------------------------------------------------------------------------- search
def test_search_without_backbone_fuses_every_backbone_of_the_store(stores, use_fake_encoders):
    ask = ["search", "a photo of a cat", "--index", stores["pair"], "-k", "6", "--json"]
    default = _cli(*ask)
    assert default.exit_code == 0, default.output
    named = _cli(*ask, "--backbone", "fake-a", "--backbone", "fake-b")
    assert named.exit_code == 0, named.output
    hits = json.loads(default.stdout)
    assert hits == json.loads(named.stdout) and len(hits) == 6
    assert {h["score_kind"] for h in hits} == {"rrf"}
    assert "no --backbone: searching all 2 backbones of the store (fake-a, fake-b)" in (
        default.stderr)
    only = _cli(*ask, "--backbone", "fake-a")
    assert json.loads(only.stdout) != hits  # fusion, not the first backbone alone


def test_search_without_backbone_on_a_one_backbone_store_is_that_backbone(
        stores, use_fake_encoders):
    ask = ["search", "a photo of a dog", "--index", stores["one"], "-k", "4", "--json"]
    default, named = _cli(*ask), _cli(*ask, "--backbone", "fake-a")
    assert default.exit_code == 0, default.output
    hits = json.loads(default.stdout)
    assert hits == json.loads(named.stdout) and hits[0]["score_kind"] == "cosine"
    assert "no --backbone" not in default.stderr


def test_search_without_backbone_on_a_folder_with_none_is_one_line(tmp_path):
    assert_one_line_error(_cli("search", "a cat", "--index", tmp_path),
                          f"{tmp_path} holds no finished backbone", "clipindex build")


# ----------------------------------------------------------------------------- --where
@pytest.mark.parametrize(("where", "written", "meant"), [
    ("label==cat", "'=='", "did you mean label=cat?"),
    ("label!==cat", "'!=='", "did you mean label!=cat?"),
    ("width=>12", "'=>'", "did you mean width>=12?"),
    ("width>>12", "'>>'", ""),
])
def test_where_with_a_foreign_operator_is_refused_with_the_syntax(
        stores, use_fake_encoders, where, written, meant):
    res = _cli("search", "a cat", "--index", stores["one"], "--backbone", "fake-a",
               "--where", where)
    line = assert_one_line_error(res, f"--where '{where}'", f"{written} is not an operator",
                                 "COLUMN=VALUE, COLUMN!=VALUE, COLUMN=A,B or COLUMN<NUMBER")
    assert meant in line
    ok = _cli("search", "a cat", "--index", stores["one"], "--backbone", "fake-a",
              "--where", "label=cat", "--json")
    assert ok.exit_code == 0, ok.output
    assert {h["label"] for h in json.loads(ok.stdout)} == {"cat"}


# ----------------------------------------------------------------------------- report
def test_report_of_a_store_says_it_is_a_store_not_a_results_folder(stores):
    store = stores["one"]
    line = assert_one_line_error(_cli("report", store), f"{store} is a store",
                                 "not a results folder", "clipindex bench")
    assert "--out" not in line.split("results folder is")[0]  # not about --out any more
    inner = assert_one_line_error(_cli("report", store / "fake-a"), "inside the store",
                                  "not a results folder")
    assert str(store.resolve()) in inner
    before = sorted(p.name for p in store.iterdir())
    assert sorted(p.name for p in store.iterdir()) == before  # nothing written


# ----------------------------------------------------------------------------- classify
@pytest.mark.parametrize("ensemble", ["soft", "majority"])
def test_classify_ensemble_with_one_backbone_is_refused(stores, use_fake_encoders, ensemble):
    base = ["classify", "--index", stores["pair"], "--method", "prompt", "--ensemble", ensemble]
    assert_one_line_error(_cli(*base, "--backbone", "fake-a"),
                          f"--ensemble {ensemble} combines two or more backbones",
                          "(fake-a)", "add --backbone NAME, or drop --ensemble")
    assert_one_line_error(_cli(*base, "--backbone", "fake-a", "--backbone", "fake-a"),
                          "two or more backbones")
    two = _cli(*base, "--backbone", "fake-a", "--backbone", "fake-b", "--json")
    assert two.exit_code == 0, two.output
    assert json.loads(two.stdout)["ensemble"] == ensemble


# ----------------------------------------------------------------------------- info
@pytest.mark.parametrize(("kind", "knobs"), [("ivf", ("nlist=", "nprobe=")),
                                             ("hnsw", ("hnsw_m=", "ef_search="))])
def test_info_shows_knobs_and_recall_of_an_explicit_index_kind(stores, kind, knobs):
    from clipindex.store import open_index

    res = _cli("info", stores[kind])
    assert res.exit_code == 0, res.output
    manifest = open_index(stores[kind], "fake-a").manifest["index"]
    for target in ("images", "captions"):
        line = next(s for s in res.output.splitlines() if f"{target} index: {kind}" in s)
        for knob in knobs:
            assert f"{knob}{manifest[target][knob.rstrip('=')]}" in line, line
        held = manifest[target]["held_out_queries"]
        assert f"recall@10 {manifest[target]['recall_at_10']:.3f} on {held} held-out " \
            "queries" in line, line


def test_info_of_a_flat_index_says_exact(stores):
    res = _cli("info", stores["one"])
    assert res.exit_code == 0, res.output
    assert "    images index: flat; exact" in res.output.splitlines()
