"""The whole demo study from cached indexes vs re-encoding for every experiment, same run.

The study: zero-shot (``a photo of a {}``) and few-shot text prototypes (captions of the
support images) for every backbone, plus a majority-vote ensemble of the few-shot
predictions, on the demo world selected by the shipped ``demo`` dataset config.

- contender, clipindex's way: ``build_store`` encodes every image and caption once per
  backbone (batched, DataLoader workers), then every experiment is a
  ``clipindex.classifiers.runner.classify`` call that only reads the store (and encodes the five
  prompts);
- baseline, the study's way: for every experiment and backbone, every test image is
  opened, preprocessed and encoded one at a time (open_clip ``preprocess`` +
  ``encode_image`` on a batch of one); texts are encoded in batches as the study did.
  The ensemble votes over the baseline's few-shot predictions without encoding again
  (the study's reported ensemble time, the sum of its few-shot times, suggests it
  re-encoded; not counting that makes the baseline faster, so the ratio is conservative).

Both sides load each model once (counted) and classify with the same classifier code
(``clipindex.classifiers``), so the only difference is how images reach the vectors;
the accuracies of both sides are reported as a check that they did the same work.

Run: ``python benchmarks/bench_study.py`` (the three tiny backbones with their shipped
weights, 1,000 images: the study's scale), or ``--quick``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from bench_encode import study_loop  # noqa: E402

SECTION = "bench_study"
CONFIG = "builtin:demo"  # the shipped dataset config


def load_demo(world: Path, per_class: int | None) -> Any:
    """The demo dataset (the study's selection) from ``world``."""
    from clipindex.sources import load_dataset

    return load_dataset(CONFIG, root=world, per_class=per_class)


# ----------------------------------------------------------------------------- contender
def cached_study(dataset: Any, backbones: list[str], args: Any) -> dict[str, Any]:
    """Encode once into a fresh store, then run every experiment from it."""
    from clipindex.classifiers.runner import classify
    from clipindex.store import build_store

    out = Path(args.workdir) / "study-store"
    shutil.rmtree(out, ignore_errors=True)  # a fresh store: encoding is part of the cost
    timings: dict[str, float] = {}
    with common.stopwatch() as total:
        with common.stopwatch() as t:
            folders = build_store(dataset, backbones, out=out, pretrained=args.pretrained,
                                  workers=args.workers, progress=False)
        timings["build"] = t["s"]
        index_dir = out / dataset.name
        folders_of = dict(zip(backbones, (f.name for f in folders), strict=True))
        preds: dict[str, np.ndarray] = {}
        with common.stopwatch() as t:
            for name, folder in folders_of.items():
                for exp, method in (("zero-shot", "prompt"), ("few-shot", "prototype")):
                    res = classify(index_dir, folder, method)
                    preds[f"{exp}/{name}"] = res.predictions["predicted"].to_numpy(str)
            res = classify(index_dir, list(folders_of.values()), "prototype",
                           ensemble="majority")
            preds["ensemble"] = res.predictions["predicted"].to_numpy(str)
        timings["experiments"] = t["s"]
    timings["total"] = total["s"]
    true = res.predictions["true"].to_numpy(str)
    test_rows = res.predictions["row_id"].to_numpy(np.int64)
    seeds = {name: _manifest(index_dir / folder).get("random_init_seed")
             for name, folder in folders_of.items()}
    return {"timings": timings, "preds": preds, "true": true, "rows": test_rows,
            "seeds": seeds}


def _manifest(folder: Path) -> dict[str, Any]:
    import json

    return json.loads((folder / "manifest.json").read_text())


# ----------------------------------------------------------------------------- baseline
def _support_captions(dataset: Any, rows: np.ndarray) -> tuple[list[str], np.ndarray]:
    caps = dataset.captions
    keep = caps["image_row_id"].isin(rows).to_numpy()
    return caps["text"][keep].astype(str).tolist(), caps["label"][keep].astype(str).to_numpy()


def _load(name: str, pretrained: str, seed: int | None) -> Any:
    """The encoder the store was built with (random-init weights from the same seed)."""
    import torch

    from clipindex.encode.encoder import load_encoder

    if seed is None:
        return load_encoder(name, pretrained=pretrained, device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return load_encoder(name, pretrained=pretrained, device="cpu")


def study_way(dataset: Any, backbones: list[str], test_rows: np.ndarray,
              seeds: dict[str, int | None], args: Any) -> dict[str, Any]:
    """Every experiment re-encodes every test image, one at a time (the study's loop)."""
    from clipindex import classifiers as C
    images = dataset.images
    classes = [str(c) for c in dataset.info.get("classes") or sorted(set(images["label"]))]
    files = [Path(dataset.root) / f for f in images["file"].to_numpy()[test_rows]]
    support = images["row_id"].to_numpy(np.int64)[images["split"].to_numpy(str) == "support"]
    texts, text_labels = _support_captions(dataset, support)
    preds: dict[str, np.ndarray] = {}
    few_shot = []
    with common.stopwatch() as total:
        for name in backbones:
            encoder = _load(name, args.pretrained, seeds[name])
            common.log(f"study: {name} zero-shot, {len(files)} images one at a time")
            zero = C.PromptClassifier(classes, encode_text=encoder.encode_texts).fit()
            preds[f"zero-shot/{name}"] = zero.predict(study_loop(encoder, files)).astype(str)
            common.log(f"study: {name} few-shot, {len(files)} images one at a time")
            proto = C.PrototypeClassifier().fit(encoder.encode_texts(texts), text_labels)
            proba = proto.predict_proba(study_loop(encoder, files))
            few_shot.append(_reorder(proba, proto.classes_, classes))
            preds[f"few-shot/{name}"] = np.asarray(classes)[few_shot[-1].argmax(1)]
        preds["ensemble"] = C.majority_vote(few_shot, classes).astype(str)
    return {"timings": {"total": total["s"]}, "preds": preds}


def _reorder(proba: np.ndarray, have: Any, want: list[str]) -> np.ndarray:
    pos = {str(c): i for i, c in enumerate(have)}
    return np.stack([proba[:, pos[c]] for c in want], axis=1)


# ----------------------------------------------------------------------------- report
def report(cached: dict[str, Any], study: dict[str, Any], dataset: Any,
           backbones: list[str]) -> tuple[list[str], list[str]]:
    """Markdown lines (per-experiment accuracy of both sides) and the ratio lines."""
    true, n_test = cached["true"], len(cached["rows"])
    lines = ["| experiment | accuracy (cached) | accuracy (study's way) | same predictions |",
             "|---|---|---|---|"]
    for key, pred in cached["preds"].items():
        other = study["preds"][key]
        lines.append(f"| {key} | {np.mean(pred == true):.3f} | {np.mean(other == true):.3f} | "
                     f"{np.mean(pred == other):.1%} |")
    ct, st = cached["timings"], study["timings"]
    lines += ["", f"- cached: {ct['total']:.1f} s in all = build {ct['build']:.1f} s (encode "
              f"all {len(dataset.images)} images and {len(dataset.captions)} captions once "
              "per backbone, write the store) + "
              f"{ct['experiments']:.1f} s for all {2 * len(backbones) + 1} experiments",
              f"- study's way: {st['total']:.1f} s ({2 * len(backbones)} passes of {n_test} "
              "test images one at a time)"]
    ratios = [
        common.ratio_line(st["total"] / ct["total"],
                          f"whole demo study with cached indexes (build included) over "
                          f"re-encoding every image for every experiment one at a time, "
                          f"total seconds ({len(backbones)} backbones, {n_test} test images)"),
        common.ratio_line(st["total"] / ct["experiments"],
                          "the same experiments re-run from an existing store over the "
                          "study's way, total seconds"),
    ]
    return lines, ratios


def _parse(argv: list[str] | None) -> Any:
    from clipindex.tiny import TINY_BACKBONES

    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=",".join(TINY_BACKBONES))
    parser.add_argument("--pretrained", default="default",
                        help="default (the shipped tiny weights), none, a tag or a path")
    parser.add_argument("--scale", default="default", help="demo world scale")
    parser.add_argument("--per-class", type=int, default=200,
                        help="images per class (demo.yaml; 0 = all)")
    parser.add_argument("--workers", type=int, default=2, help="build's decoding workers")
    parser.add_argument("--tiny-architectures", action="store_true",
                        help="stand-ins while the tiny weights are not shipped: the tiny "
                             "backbones' architectures (clipindex.tiny.configs) with open_clip's "
                             "default tokenizer, random init (implies --pretrained none)")
    parser.add_argument("--seed", type=int, default=0, help="demo world seed")
    args = parser.parse_args(argv)
    if args.quick:
        args.scale, args.per_class = "small", 14
    if args.tiny_architectures:
        names = [b.strip() for b in args.backbones.split(",") if b.strip()]
        args.model_config.append(tiny_architecture_configs(Path(args.workdir), names))
        args.backbones = ",".join(f"{name}-arch" for name in names)
        args.pretrained = "none"
    return args


def tiny_architecture_configs(workdir: Path, names: list[str]) -> Path:
    """Write open_clip configs ``<name>-arch`` of the tiny architectures; their folder."""
    import json

    from clipindex.tiny.configs import model_cfg

    folder = workdir / "tiny-architectures"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        cfg = model_cfg(name, vocab_size=49408)  # open_clip's default BPE vocabulary
        cfg["text_cfg"].pop("hf_tokenizer_name", None)
        (folder / f"{name}-arch.json").write_text(json.dumps(cfg, indent=1))
    return folder


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (``argv``: command-line arguments) and update RESULTS.md."""
    return common.run_with_threads(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    common.register_model_configs(args.model_config)
    info = common.machine_info()
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    dataset = load_demo(common.demo_world(args.workdir, args.scale, args.seed),
                        args.per_class or None)
    common.log(f"study: cached indexes ({len(dataset.images)} images)")
    cached = cached_study(dataset, backbones, args)
    study = study_way(dataset, backbones, cached["rows"], cached["seeds"], args)
    lines, ratios = report(cached, study, dataset, backbones)
    print("\n".join(lines + [""] + ratios))
    if not args.no_write:
        head = [f"- command: `{common.command_line()}`", *common.machine_lines(info),
                f"- demo world `--scale {args.scale}` (seed {args.seed}) selected by "
                f"the `demo` dataset config with per_class={args.per_class or 'all'}: "
                f"{len(dataset.images)} images ({len(cached['rows'])} test, the rest "
                f"support), {len(dataset.captions)} captions; backbones "
                f"{', '.join(backbones)} (`--pretrained {args.pretrained}`); experiments: "
                "zero-shot and few-shot prototype per backbone + few-shot majority vote",
                *(["- **stand-ins**: the tiny backbones' architectures with random weights "
                   "and open_clip's default tokenizer (`--tiny-architectures`), because "
                   "the trained tiny weights were not shipped yet: the timings are "
                   "representative, the accuracies are chance"] if args.tiny_architectures
                  else []),
                ""]
        common.write_section(SECTION, "The demo study: cached indexes vs re-encoding",
                             head + lines, ratios, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
