"""HTML pieces of the report: escaping, tables, embedded pictures, notices, the page.

Everything is inline: the CSS below, pictures as ``data:image/png;base64,...`` URIs,
system fonts only. The page has no script of its own and loads nothing.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from typing import Any

from PIL import Image

__all__ = ["CSS", "esc", "table", "img_tag", "png_uri", "pil_png", "notice", "figure",
           "page", "section", "Markup"]

CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --bg:#f5f7fa; --card:#fff;
  --accent:#2f6fdb; --accent2:#e8793a; --good:#2e8540; --bad:#c0392b; --warn:#fff4e5; }
* { box-sizing: border-box; }
body { margin:0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans",
  Arial, sans-serif; color:var(--ink); background:var(--bg); line-height:1.5; }
header.top { background: linear-gradient(120deg, #1d3f7a, #2f6fdb 60%, #4b8be8);
  color:#fff; padding:28px 40px 22px; }
header.top h1 { margin:0 0 4px; font-size:28px; font-weight:650; letter-spacing:.2px; }
header.top p { margin:0; opacity:.9; }
nav.toc { position:sticky; top:0; z-index:5; background:#fff; border-bottom:1px solid
  var(--line); padding:8px 40px; display:flex; flex-wrap:wrap; gap:6px 18px; }
nav.toc a { color:var(--accent); text-decoration:none; font-size:14px; font-weight:500; }
nav.toc a:hover { text-decoration:underline; }
main { max-width:1180px; margin:0 auto; padding:10px 24px 60px; }
section.card { background:var(--card); border:1px solid var(--line); border-radius:10px;
  padding:20px 26px 24px; margin:22px 0; box-shadow:0 1px 2px rgba(0,0,0,.04); }
section.card > h2 { margin:0 0 12px; font-size:21px; display:flex; align-items:baseline;
  gap:10px; }
section.card > h2 .num { color:var(--accent); font-variant-numeric:tabular-nums; }
h3 { font-size:16px; margin:20px 0 8px; }
p.lead, p.note { color:var(--muted); margin:6px 0 10px; font-size:14px; }
.stats { display:flex; flex-wrap:wrap; gap:12px; margin:8px 0 14px; }
.stat { flex:1 1 140px; background:var(--bg); border-radius:8px; padding:10px 14px; }
.stat b { display:block; font-size:22px; color:var(--accent); }
.stat span { font-size:13px; color:var(--muted); }
table.data { border-collapse:collapse; margin:8px 0 14px; font-size:14px; width:auto;
  min-width:50%; }
.tablewrap { overflow-x:auto; max-width:100%; }
table.data th { text-align:left; background:#eef2f8; border-bottom:2px solid #cbd2d9;
  padding:6px 10px; font-weight:600; vertical-align:bottom; }
table.data td { padding:5px 10px; border-bottom:1px solid var(--line); }
table.data td:first-child { white-space:nowrap; }
table.data td.n { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
table.data tr:nth-child(even) td { background:#fafbfc; }
table.data tr.ensemble td { background:#fff6ee; }
table.data tr.best td { font-weight:650; }
.badge { display:inline-block; font-size:11px; font-weight:600; padding:1px 7px;
  border-radius:9px; background:#e3ecfb; color:#1d3f7a; margin-left:6px; vertical-align:1px; }
.badge.ens { background:#fde7d6; color:#8a3d0f; }
.badge.gold { background:#fff1bf; color:#7a5a00; }
figure { margin:10px 0 16px; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:6px;
  background:#fff; }
figcaption { font-size:13px; color:var(--muted); margin-top:4px; }
.grid2 { display:grid; grid-template-columns:repeat(auto-fit, minmax(360px, 1fr));
  gap:14px 22px; }
.gallery { display:grid; grid-template-columns:repeat(auto-fill, minmax(170px, 1fr));
  gap:14px; margin:10px 0 16px; align-items:start; }
.gallery .thumb > img { height:150px; object-fit:contain; background:#f0f2f5; }
.thumb { border:1px solid var(--line); border-radius:8px; padding:6px; background:#fff;
  font-size:12.5px; }
.thumb img { width:100%; height:auto; border-radius:4px; display:block; }
.thumb .cap { margin-top:5px; line-height:1.35; }
.thumb .cap .t { color:var(--good); font-weight:600; }
.thumb .cap .p { color:var(--bad); font-weight:600; }
.thumb .cap .m { color:var(--muted); }
.pair { display:grid; grid-template-columns:1fr 1fr; gap:4px; }
.camrow { display:grid; grid-template-columns:repeat(auto-fill, minmax(250px, 1fr));
  gap:14px; margin:8px 0 14px; align-items:start; }
.missing { background:var(--warn); border-left:4px solid var(--accent2); padding:10px 14px;
  border-radius:6px; margin:8px 0; font-size:14px; }
.missing b { color:#8a3d0f; }
.noimg { height:110px; display:flex; align-items:center; justify-content:center;
  background:#f0f2f5; color:var(--muted); border-radius:4px; font-size:12px; }
ul.tight { margin:4px 0 10px; padding-left:20px; }
ul.tight li { margin:2px 0; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
  font-size:13px; }
pre.block { background:#1f2933; color:#e4e7eb; padding:12px 14px; border-radius:8px;
  overflow-x:auto; }
footer { text-align:center; color:var(--muted); font-size:12px; padding:20px; }
"""


def esc(value: Any) -> str:
    """``value`` as HTML-escaped text."""
    return html.escape("" if value is None else str(value), quote=True)


def pil_png(image: Image.Image) -> bytes:
    """A PIL image as PNG bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def png_uri(data: bytes) -> str:
    """PNG bytes as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def img_tag(data: bytes, alt: str, *, width: int | None = None) -> str:
    """An ``<img>`` holding PNG bytes inline (``width`` in CSS pixels, optional)."""
    size = f' width="{int(width)}"' if width else ""
    return f'<img src="{png_uri(data)}" alt="{esc(alt)}"{size} loading="eager">'


def figure(data: bytes, caption: str, *, alt: str | None = None) -> str:
    """A captioned embedded PNG."""
    return (f"<figure>{img_tag(data, alt or caption)}"
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def notice(what: str, detail: str = "") -> str:
    """The box a section shows for a missing part (says what is missing and why)."""
    extra = f" {esc(detail)}" if detail else ""
    return f'<div class="missing"><b>Missing:</b> {esc(what)}.{extra}</div>'


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], *,
          numeric: Sequence[bool] | None = None,
          row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; cells are escaped unless they are ``Markup`` (pre-built HTML)."""
    numeric = list(numeric) if numeric is not None else [False] * len(header)
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes is not None and i < len(row_classes) else ""
        cells = "".join(
            f'<td{" class=n" if j < len(numeric) and numeric[j] else ""}>{_cell(v)}</td>'
            for j, v in enumerate(row))
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return (f'<div class="tablewrap"><table class="data"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


class Markup(str):
    """A string that is already HTML (not escaped again by :func:`table`)."""


def _cell(value: Any) -> str:
    return str(value) if isinstance(value, Markup) else esc(value)


def section(sid: str, number: int, title: str, body: str) -> str:
    """One numbered card of the page with ``id=sid``."""
    return (f'<section class="card" id="{esc(sid)}"><h2><span class="num">'
            f"{number:02d}.</span> {esc(title)}</h2>\n{body}\n</section>")


def page(title: str, subtitle: str, toc: Sequence[tuple[str, str]], sections: Sequence[str],
         footer: str) -> str:
    """The whole self-contained document."""
    links = "".join(f'<a href="#{esc(sid)}">{esc(name)}</a>' for sid, name in toc)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>"
        f'<header class="top"><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>'
        f'<nav class="toc">{links}</nav>\n<main>\n' + "\n".join(sections)
        + f"\n</main><footer>{esc(footer)}</footer></body></html>\n")
