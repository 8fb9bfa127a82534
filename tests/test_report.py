"""`clipindex report` / `write_report`: the self-contained HTML dashboard.

The bench runs on the small demo world with the stand-in encoders of fixtures_store; two
of the three stand-ins also carry a small random-initialised open_clip model (a
ModifiedResNet and a VisionTransformer) so the Grad-CAM section has real models to
explain. The page is checked as text (every picture a PNG data URI, nothing fetched) and
in a real headless Chromium (marker ``browser``): it loads without console errors, every
``<img>`` decodes, every section is there; a screenshot is saved for humans.
"""

from __future__ import annotations

import base64
import dataclasses
import html as htmlmod
import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_store import FAKE_BACKBONES, FAKE_DIM, FakeEncoder, fake_resolve, install_fakes

from clipindex.cli import main
from clipindex.errors import UserInputError
from clipindex.report import SECTIONS, ReportOptions, build_report, write_report
from clipindex.report._analysis import PROJECTIONS
from clipindex.report._sections import top_words

SECTION_IDS = ["overview", "eda", "results", "retrieval", "confusion", "errors", "gradcam",
               "projection"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = ("Debian's chromium is not installed: "
               "apt-get update && apt-get install -y chromium")
OPTS = ReportOptions(gallery=8, gradcam_per_kind=2)


# ----------------------------------------------------------------------------- stand-ins
def _tiny_clip(tower: str) -> Any:
    """A small random-initialised open_clip CLIP whose embedding dim is the stand-ins'."""
    import torch
    from open_clip.model import CLIP

    text = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}
    vision = ({"image_size": 128, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16}
              if tower == "rn" else
              {"image_size": 32, "patch_size": 4, "width": 32, "layers": 1, "head_width": 16})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return CLIP(embed_dim=FAKE_DIM, vision_cfg=vision, text_cfg=text).eval()


class CamEncoder(FakeEncoder):
    """A stand-in encoder with a ``model`` for Grad-CAM (vectors still the stand-ins')."""

    TOWERS = {"fake-a": "rn", "fake-b": "vit"}

    def __init__(self, spec: Any, device: Any = None) -> None:
        super().__init__(spec, device)
        self.model = _tiny_clip(self.TOWERS[spec.model])


def _load(spec: Any, *, pretrained: Any = "default", device: Any = None, **_: Any) -> Any:
    if isinstance(spec, str):
        spec = fake_resolve(spec, pretrained)
    cls = CamEncoder if spec.model in CamEncoder.TOWERS else FakeEncoder
    return cls(spec, device)


def _install(mp: pytest.MonkeyPatch, *, cam: bool = True) -> None:
    from clipindex.encode import encoder as encoders

    install_fakes(mp)
    if cam:
        mp.setattr(encoders, "load_encoder", _load)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """torch and OpenMP/BLAS on one thread: on the shared 2-core box two threads made a
    small ResNet forward 160x slower (0.8 s vs 5 ms) and t-SNE 10x slower."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bench_results(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo bench run (3 methods) with the stand-in encoders: RESULTS folder."""
    from clipindex.bench import run_bench
    from clipindex.demo import demo_config

    tmp = tmp_path_factory.mktemp("report-bench")
    cfg = dataclasses.replace(demo_config(small_world, scale="small", backbones=FAKE_BACKBONES),
                              methods=("prompt", "prototype", "image-knn"))
    with pytest.MonkeyPatch.context() as mp:
        _install(mp)
        res = run_bench(cfg, tmp / "results", index_root=tmp / "indexes", workers=0,
                        progress=False)
    return res.out


@pytest.fixture(scope="module")
def report(bench_results: Path) -> tuple[Path, dict[str, str]]:
    """The full report of that run (Grad-CAM through the stand-ins' small models)."""
    with pytest.MonkeyPatch.context() as mp:
        _install(mp)
        text, missing = build_report(bench_results, options=OPTS)
    path = bench_results / "report.html"
    path.write_text(text, encoding="utf-8")
    return path, missing


def _copy_results(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "report.html").unlink(missing_ok=True)
    return dst


# ----------------------------------------------------------------------------- page as text
def _img_sources(text: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", text)


def test_report_has_every_section_and_nothing_missing(report: tuple[Path, dict]) -> None:
    path, missing = report
    text = path.read_text(encoding="utf-8")
    assert missing == {}
    for sid in SECTION_IDS:
        assert len(re.findall(rf'<section class="card" id="{sid}">', text)) == 1, sid
    assert [s.sid for s in SECTIONS if s.sid in SECTION_IDS] == SECTION_IDS
    assert "Missing:" not in text and "could not be drawn" not in text
    # the content the sections promise
    for needle in ("with a target class", "one target class only", "sum over classes",
                   "counts once for each", "Top 20 words",
                   "Zero-shot: one text prompt per class", "Few-shot: caption prototypes",
                   "Ensemble (majority vote)", "Text→image R@1", "Error rate by cause",
                   "lookalike", "ResNet: FAKE-A", "ViT: FAKE-B", "PCA of the stored"):
        assert needle in text, needle


def test_report_is_self_contained(report: tuple[Path, dict]) -> None:
    from PIL import Image

    text = report[0].read_text(encoding="utf-8")
    sources = _img_sources(text)
    # funnel, sizes, captions, words, accuracy, 2 confusions, causes, projection, sample,
    # 8 gallery thumbnails, 2 backbones x 4 Grad-CAM cards x (image + map)
    assert len(sources) >= 10 + 8 + 16
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            assert im.format == "PNG" and im.width > 0 and im.height > 0
    lowered = text.lower()
    assert "<script" not in lowered and "<link" not in lowered and "@import" not in lowered
    assert not re.search(r"(src|href)=\"(https?:|//|file:)", lowered)
    assert "url(" not in lowered


def test_report_tables_match_the_run(report: tuple[Path, dict], bench_results: Path) -> None:
    import pandas as pd

    text = report[0].read_text(encoding="utf-8")
    tables = pd.read_csv(bench_results / "tables.csv")
    for acc in tables.loc[tables["method"] == "prompt", "accuracy"]:
        assert f">{acc:.3f}<" in text
    retrieval = pd.read_csv(bench_results / "retrieval.csv")
    assert f">{retrieval['t2i_R@5'].iloc[0]:.3f}<" in text


def test_top_words_drop_stop_words() -> None:
    assert top_words(["A dog and a cat", "the dog runs", "The DOG"], 2) == [("dog", 3),
                                                                          ("cat", 1)]


def test_pca_is_deterministic_and_centred() -> None:
    x = np.random.default_rng(0).standard_normal((50, 8))
    a, b = PROJECTIONS["pca"](x, 0), PROJECTIONS["pca"](x[::-1].copy(), 0)[::-1]
    np.testing.assert_allclose(a, b, atol=1e-9)
    np.testing.assert_allclose(a.mean(axis=0), 0.0, atol=1e-9)
    assert a[:, 0].var() >= a[:, 1].var()


# ----------------------------------------------------------------------------- missing parts
def test_missing_parts_still_render_and_say_what_is_missing(bench_results: Path,
                                                            tmp_path: Path) -> None:
    res = _copy_results(bench_results, tmp_path / "results")
    (res / "retrieval.csv").unlink()
    (res / "confusion_few_shot.png").unlink()
    run = json.loads((res / "run.json").read_text())
    run["dataset_dir"] = str(tmp_path / "gone" / "demo")  # the store was deleted
    (res / "run.json").write_text(json.dumps(run))
    with pytest.MonkeyPatch.context() as mp:
        _install(mp)
        path = write_report(res, tmp_path / "partial.html", options=OPTS)
    text = path.read_text(encoding="utf-8")
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in text
    section = {sid: text.split(f'id="{sid}"', 1)[1].split("</section>", 1)[0]
               for sid in SECTION_IDS}
    assert "Missing:</b> retrieval.csv is not in" in section["retrieval"]
    assert "Missing:</b> confusion_few_shot.png" in section["confusion"]
    assert "<img" in section["confusion"]  # the zero-shot grid is still there
    for sid in ("eda", "gradcam", "projection"):
        assert "Missing:</b> the store" in section[sid], sid
    assert "Missing:</b> the store" in section["overview"]
    assert "<img" in section["results"] and "could not be drawn" not in text


@pytest.mark.parametrize(("name", "text", "why"), [
    ("run.json", "{bad", "not JSON (JSONDecodeError)"),
    ("run.json", "[1, 2]", "a JSON list, not an object"),
    ("run.json", None, "a JSON object whose 'config' is a list"),
    ("run.json", '{"backbones": [3]}', "a JSON object whose 'backbones' are not all"),
    ("records/fake-a__prompt.json", "[]", "a JSON list, not an object"),
    ("records/fake-a__prompt.json", '{"method": ["prompt"]}', "whose 'method' is a list"),
])
def test_results_json_of_the_wrong_shape_renders_and_says_it_is_unreadable(
        bench_results: Path, tmp_path: Path, name: str, text: str | None, why: str) -> None:
    res = _copy_results(bench_results, tmp_path / "results")
    if text is None:  # run.json as bench wrote it, but its config a list
        run = json.loads((res / "run.json").read_text())
        text = json.dumps({**run, "config": [1]})
    (res / name).write_text(text, encoding="utf-8")
    out = tmp_path / "r.html"
    with pytest.MonkeyPatch.context() as mp:
        _install(mp, cam=False)
        result = CliRunner().invoke(main, ["report", str(res), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    pipeline = page.split('id="pipeline"', 1)[1].split("</section>", 1)[0]
    assert f"Missing:</b> {name} (unreadable: it is " in pipeline
    assert htmlmod.escape(why) in pipeline
    assert "could not be drawn" not in page


def test_no_gradcam_capable_backbone_is_said(bench_results: Path, tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        _install(mp, cam=False)  # the plain stand-ins have no model to explain
        text, missing = build_report(bench_results, options=dataclasses.replace(
            OPTS, gallery=2))
    assert set(missing) == {"gradcam"}
    gradcam = text.split('id="gradcam"', 1)[1].split("</section>", 1)[0]
    assert "Missing:</b> a Grad-CAM capable backbone" in gradcam
    assert "fake-a: not an open_clip ResNet or ViT model" in gradcam


def test_not_a_results_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="holds none of"):
        write_report(tmp_path)
    with pytest.raises(UserInputError, match="is not a folder"):
        write_report(tmp_path / "nope")


# ----------------------------------------------------------------------------- CLI
def test_cli_writes_the_report_with_tsne(bench_results: Path, tmp_path: Path) -> None:
    res = _copy_results(bench_results, tmp_path / "results")
    out = tmp_path / "r.html"
    with pytest.MonkeyPatch.context() as mp:
        _install(mp, cam=False)
        result = CliRunner().invoke(main, ["report", str(res), "--out", str(out),
                                           "--projection", "tsne"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(str(out))
    text = out.read_text(encoding="utf-8")
    assert "TSNE of the stored image vectors" in text


def test_cli_default_out_and_errors(bench_results: Path, tmp_path: Path) -> None:
    res = _copy_results(bench_results, tmp_path / "results")
    (res / "records").rename(tmp_path / "records")  # keep it quick: fewer parts to draw
    with pytest.MonkeyPatch.context() as mp:
        _install(mp, cam=False)
        ok = CliRunner().invoke(main, ["report", str(res)])
    assert ok.exit_code == 0, ok.output
    assert (res / "report.html").is_file()
    runner = CliRunner()
    bad = runner.invoke(main, ["report", str(res), "--projection", "mds"])
    assert bad.exit_code == 2 and "mds" in bad.output
    empty = tmp_path / "empty"
    empty.mkdir()
    none = runner.invoke(main, ["report", str(empty)])
    assert none.exit_code == 2 and "holds none of" in none.output


def test_demo_ends_by_writing_the_report(bench_results: Path, small_world: Path,
                                         tmp_path: Path) -> None:
    from clipindex.demo import run_demo

    shutil.copytree(bench_results.parent / "indexes", tmp_path / "indexes")  # reuse stores
    with pytest.MonkeyPatch.context() as mp:
        _install(mp, cam=False)
        res = run_demo(tmp_path, world=small_world, scale="small", backbones=FAKE_BACKBONES,
                       workers=0, progress=False)
    assert res.report == tmp_path / "results" / "report.html"
    text = res.report.read_text(encoding="utf-8")
    assert all(f'id="{sid}"' in text for sid in SECTION_IDS)
    assert "caption-knn" in text and "linear-probe" in text  # every demo method


# ----------------------------------------------------------------------------- browser
_CHECK = """<script>
window.__errs = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  window.__errs.push(t && t !== window && t.tagName ? 'resource ' + (t.src || t.href)
                                                   : 'js ' + e.message);
}, true);
['error', 'warn'].forEach(function (k) {
  var orig = console[k];
  console[k] = function () {
    window.__errs.push(k + ' ' + Array.prototype.join.call(arguments, ' '));
    orig.apply(console, arguments);
  };
});
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var out = {
    ids: IDS.filter(function (id) { return document.getElementById(id) !== null; }),
    images: imgs.length,
    broken: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                .map(function (i) { return i.alt; }),
    resources: performance.getEntriesByType('resource').map(function (r) { return r.name; }),
    errors: window.__errs,
    height: document.documentElement.scrollHeight
  };
  var pre = document.createElement('pre');
  pre.id = 'check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def check_in_browser(page: Path, tmp: Path) -> dict[str, Any]:
    """Load a copy of ``page`` with the check script in headless Chromium; its findings."""
    text = page.read_text(encoding="utf-8")
    probe = tmp / f"{page.stem}.check.html"
    probe.write_text(text.replace("<head>", "<head>" + _CHECK.replace(
        "IDS", json.dumps(SECTION_IDS)), 1), encoding="utf-8")
    done = _chromium(["--window-size=1280,900", "--virtual-time-budget=10000", "--dump-dom",
                      probe.as_uri()],
                     tmp / "profile")
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no check output; stderr: {done.stderr[-2000:]}"
    result = json.loads(htmlmod.unescape(found.group(1)))
    result["console"] = [ln for ln in done.stderr.splitlines() if ":CONSOLE" in ln]
    return result


def screenshot(page: Path, out: Path, tmp: Path, height: int) -> Path:
    done = _chromium([f"--window-size=1280,{min(max(height, 800), 16000)}",
                      f"--screenshot={out}", page.as_uri()], tmp / "profile-shot")
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason=NO_CHROMIUM)
def test_report_loads_in_headless_chromium(report: tuple[Path, dict], tmp_path: Path) -> None:
    from PIL import Image

    result = check_in_browser(report[0], tmp_path)
    assert result["ids"] == SECTION_IDS
    assert result["images"] == len(_img_sources(report[0].read_text(encoding="utf-8")))
    assert result["images"] >= 30
    assert result["broken"] == []
    assert result["errors"] == [] and result["console"] == []
    assert result["resources"] == []  # nothing fetched: no network, no files
    shot = screenshot(report[0], tmp_path / "report.png", tmp_path, result["height"])
    with Image.open(shot) as im:
        assert im.width == 1280 and im.height >= 800
        # not a blank page: the header's blue and the charts' colours are there
        assert len(np.unique(np.asarray(im.convert("RGB"))[:400:4, ::4].reshape(-1, 3),
                             axis=0)) > 50
    print(f"screenshot: {shot}")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason=NO_CHROMIUM)
def test_partial_report_loads_in_headless_chromium(bench_results: Path,
                                                   tmp_path: Path) -> None:
    res = _copy_results(bench_results, tmp_path / "results")
    for name in ("retrieval.csv", "errors.csv", "confusion_zero_shot.png"):
        (res / name).unlink()
    with pytest.MonkeyPatch.context() as mp:
        _install(mp, cam=False)
        path = write_report(res, options=dataclasses.replace(OPTS, gallery=2))
    result = check_in_browser(path, tmp_path)
    assert result["ids"] == SECTION_IDS
    assert result["broken"] == [] and result["errors"] == [] and result["console"] == []
    assert result["images"] > 5
    text = path.read_text(encoding="utf-8")
    assert "Missing:</b> errors.csv is not in" in text
    assert "Missing:</b> retrieval.csv is not in" in text


def _section_html(text: str, sid: str) -> str:
    match = re.search(rf'<section class="card" id="{sid}">(.*?)</section>', text, re.DOTALL)
    assert match, sid
    return match.group(1)


def test_audit_section_shows_the_top_suspects(bench_results: Path, tmp_path: Path) -> None:
    """`clipindex audit --out RESULTS/audit` puts its suspects' thumbnails in the report;
    without it the section says how to get one."""
    from clipindex.audit import audit_store

    results = _copy_results(bench_results, tmp_path / "results")
    run = json.loads((results / "run.json").read_text())
    with pytest.MonkeyPatch.context() as mp:
        _install(mp)
        before, _ = build_report(results, options=OPTS)
        res = audit_store(run["dataset_dir"], list(FAKE_BACKBONES), results / "audit")
        after, missing = build_report(results, options=OPTS)
    assert "No label audit in this run" in _section_html(before, "audit")
    part = _section_html(after, "audit")
    n_flagged = int(res.issues["issue"].sum())
    assert n_flagged > 0 and "audit" not in missing
    assert f"<b>{n_flagged} of {len(res.issues)} audited images</b>" in part
    assert len(_img_sources(part)) == min(OPTS.gallery, n_flagged)
    first = res.issues[res.issues["issue"]].iloc[0]
    assert f"#{first['rank']} label" in part and htmlmod.escape(str(first["file"])) in part
