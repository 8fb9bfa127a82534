"""``clipindex info``: what a store holds (funnel, backbones, counts, timings, skipped)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from clipindex.cli._app import main

_MAX_SKIPPED = 20  # skipped inputs listed per backbone in the text view


def _funnel_lines(funnel: dict[str, Any]) -> list[str]:
    """Scalar stages as ``name: n``; per-class stages as one table (classes x stages)."""
    lines = [f"  {k}: {v}" for k, v in funnel.items() if not isinstance(v, dict)]
    stages = [k for k, v in funnel.items() if isinstance(v, dict)]
    if stages:
        classes = sorted({c for s in stages for c in funnel[s]})
        width = max([len("class")] + [len(c) for c in classes])
        lines.append("  " + "class".ljust(width) + "".join(f"  {s:>14}" for s in stages))
        for c in classes:
            cells = "".join(f"  {str(funnel[s].get(c, '-')):>14}" for s in stages)
            lines.append("  " + c.ljust(width) + cells)
    return lines


def _backbone_lines(b: dict[str, Any]) -> list[str]:
    if b.get("dim") is None:  # the manifest itself is unreadable
        return [f"  {b['backbone_folder']}: DAMAGED: {m}" for m in b.get("damaged") or []]
    t = b.get("timings") or {}
    index = b.get("index") or {}
    speed = t.get("images_per_s")
    line = (f"  {b['backbone_folder']}: {b.get('display_name')}, dim {b.get('dim')} "
            f"{b.get('dtype')}, {b.get('n_images')} images, {b.get('n_captions')} captions, "
            f"{b.get('n_skipped')} skipped, index {index.get('kind')}"
            + (f", {speed:,.0f} images/s" if speed else "")
            + (f", params {b['params']:,}" if b.get("params") else "")
            + (f", STALE ({b.get('stale_reason') or 'dataset changed; rebuild'})"
               if b.get("stale") else ""))
    out = [line]
    if b.get("decode_route"):
        from clipindex.store.routes import route_note

        out.append("    " + route_note(b["decode_route"], b.get("decode_route_recorded", True)))
    for target in ("images", "captions"):
        out += _index_lines(target, index.get(target))
    for message in b.get("damaged") or []:
        out.append(f"    DAMAGED: {message}")
    skipped = b.get("skipped") or []
    for s in skipped[:_MAX_SKIPPED]:
        out.append(f"    skipped row {s['row_id']}: {s['file']}: {s['reason']}")
    if len(skipped) > _MAX_SKIPPED:
        out.append(f"    ... and {len(skipped) - _MAX_SKIPPED} more (all of them: --json)")
    return out


def _generation_lines(info: dict[str, Any]) -> list[str]:
    """Generation, tombstones, history and stale backbones (``clipindex add``)."""
    if not info.get("generation") and not info.get("history"):
        return []
    lines = [f"  generation {info['generation']}: {info.get('tombstoned_images', 0)} "
             f"tombstoned images, {info.get('tombstoned_captions', 0)} tombstoned captions "
             "(`clipindex compact` drops them)"]
    for h in info.get("history") or []:
        what = ("compacted" if h.get("compacted") else
                f"+{h.get('added', 0)} images, -{h.get('removed', 0)} removed"
                if "added" in h else f"built {', '.join(h.get('built') or [])}")
        lines.append(f"    g{h.get('generation')}: {what}")
    stale = [b["backbone_folder"] for b in info["backbones"] if b.get("stale")]
    if stale:
        lines.append(f"  stale backbones: {', '.join(stale)} (update with `clipindex add "
                     f"SOURCE --index {info['path']} --backbone NAME`)")
    return lines


def _check_line(info: dict[str, Any]) -> str:
    if info["damaged"]:
        return f"check: {len(info['damaged'])} damaged file(s) (listed above)"
    if info["verified"]:
        return "check: verified, every file matches its recorded sha256"
    if not info["tables_verified"]:
        return ("check: not verified (store format 1: its tables have no hashes and its "
                "manifests no seal; its vectors and FAISS files were hashed, no dates being "
                "recorded). `clipindex info --verify` also checks the tables against the "
                "dataset fingerprint")
    return ("check: not verified (tables and manifests hashed; vectors and FAISS files "
            "checked by size and date). `clipindex info --verify` hashes every file")


_KNOBS = ("nlist", "nprobe", "hnsw_m", "ef_search", "pq_m", "pq_nbits", "opq",
          "rerank_factor")


def _index_lines(target: str, desc: Any) -> list[str]:
    """One matrix's index: its kind (what ``auto`` chose), knobs and the recall@10
    measured against exact search on held-out queries (not in the index) at build and
    after each add, with their number, for every kind (flat is exact)."""
    if not isinstance(desc, dict) or not desc.get("kind"):
        return []
    knobs = ", ".join(f"{k}={desc[k]}" for k in _KNOBS if k in desc)
    kind = (f"auto -> {desc['kind']}" if desc.get("chosen_by") == "auto" else desc["kind"])
    line = f"    {target} index: {kind}" + (f" ({knobs})" if knobs else "")
    by_query = desc.get("recall_at_10_by_query") or {}
    held = desc.get("held_out_queries")
    on = f" on {held} held-out queries" if isinstance(held, int) else ""
    if by_query:
        got = ", ".join(f"{q.replace('_', ' ')} {r:.3f}" for q, r in by_query.items())
        line += (f"; recall@10 {got}{on} (target {desc.get('target_recall')}"
                 + ("" if desc.get("reached", True) else ", NOT reached") + ")")
    elif isinstance(desc.get("recall_at_10"), (int, float)):
        line += (f"; recall@10 {desc['recall_at_10']:.3f}"
                 + (on or " (measured at build vs exact search)"))
    elif desc["kind"] == "flat":
        line += "; exact"
    if desc.get("p50_ms") is not None:
        line += f"; p50 {desc['p50_ms']:.2f} ms"
    if desc.get("memory_bytes") is not None:
        line += f"; {desc['memory_bytes'] / 1e6:,.1f} MB"
    return [line]


@main.command("info")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--verify", is_flag=True,
              help="Hash every file against the sha256 its build recorded (slow on big "
                   "stores); exit 2 listing what is damaged.")
def info_command(directory: Path, as_json: bool, verify: bool) -> None:
    """Describe the store in DIRECTORY (a dataset folder OUT/<dataset>) and check its
    files; exit 2 when one is damaged."""
    from clipindex.errors import DamagedStoreError
    from clipindex.store import store_info

    info = store_info(directory, verify=verify)
    if as_json:
        click.echo(json.dumps(info, default=str))
    else:
        click.echo("\n".join(_lines(info)))
    damaged = info["damaged"]
    if damaged:
        more = f" ({len(damaged) - 1} more damaged file(s) listed)" if len(damaged) > 1 else ""
        raise DamagedStoreError(damaged[0] + more)


def _lines(info: dict[str, Any]) -> list[str]:
    ds = info["dataset"]
    lines = [f"dataset {ds.get('name')} ({ds.get('source')}) at {info['path']}",
             f"  images: {info['n_images']}, captions: {info['n_captions']}, "
             f"fingerprint {str(ds.get('fingerprint'))[:12]}"]
    table_damage = [m for m in info["damaged"]
                    if not any(m in (b.get("damaged") or []) for b in info["backbones"])]
    lines += [f"  DAMAGED: {m}" for m in table_damage]
    lines += _generation_lines(info)
    if ds.get("funnel"):
        lines += ["funnel:"] + _funnel_lines(ds["funnel"])
    lines.append("backbones:" if info["backbones"] else "backbones: none built")
    for b in info["backbones"]:
        lines += _backbone_lines(b)
    if info["unfinished"]:
        lines.append("unfinished (rerun `clipindex build` to resume): "
                     + ", ".join(info["unfinished"]))
    lines.append(_check_line(info))
    return lines
