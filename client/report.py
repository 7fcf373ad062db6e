"""`deal-client report`: one HTML page that shows a person what a selection picked, and why.

    OUT/report.html         the page: the run's summary, the colour bar and class legend, the
                            picks as a ranked contact sheet, score histograms of the pool and
                            the picks, the class balance of both, the near-duplicates skipped;
                            for a selection of regions, the pixels bought, their share of the
                            pool's and the labelling cost, and each frame's bought regions
                            outlined on its picture
    OUT/report_files/       its pictures (JPEG/PNG thumbnails), loaded lazily

No script, and nothing is fetched from the network (a Content-Security-Policy forbids it): the
page works offline and from a file share. Overlays and segmentations come from the maps of
`--maps` (their raw layers, `maps.layer_names`); without them a card shows the image only.
"""

from __future__ import annotations

import html
import io
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dealseg.core.colors import DIFFICULTY_LABEL, class_colors, css_gradient
from dealseg.core.decode import DecodeError
from dealseg.core.files import atomic_write
from dealseg.core.ranking import SCORE_COLUMNS
from dealseg.core.strategies import NOVEL_THRESHOLD

from .engines import default_model_path
from .logs import decode_any
from .maps import layer_names, overlay, segmentation_rgb
from .outdir import MAPS
from .records import Table, record_path, spec_of
from .regions import REGIONS_JSON, buys_regions, read_region_mask

REPORT_HTML = "report.html"
REPORT_FILES = "report_files"
THUMB = (150, 200)  # largest thumbnail H x W
BINS = 20
OUTLINE = (255, 230, 0)  # the edges of the bought regions on a picture
OFF_DOMAIN_LISTED = 200  # off-domain images the report lists by name, furthest first
_CSP = "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'"


@dataclass(frozen=True)
class Thumbs:
    """A card's pictures, as paths relative to the page (None: not available), and why not."""

    image: str | None
    difficulty: str | None = None
    segmentation: str | None = None
    size: tuple[int, int] = THUMB
    problem: str = ""


def model_card(model_id: str) -> Path | None:
    """The shipped model card if it documents `model_id`."""
    card = default_model_path().parents[1] / "MODEL_CARD.md"
    try:
        return card if f"`{model_id}`" in card.read_text() else None
    except OSError:
        return None


def remove_report(out: Path) -> None:
    """Remove OUT/report.html and its pictures (the page of an earlier selection)."""
    (Path(out) / REPORT_HTML).unlink(missing_ok=True)
    shutil.rmtree(Path(out) / REPORT_FILES, ignore_errors=True)


def write_report(out: Path, table: Table, selection: dict[str, Any]) -> Path:
    """Write OUT/report.html and its pictures for `selection` (a selection.json object) of the
    scores `table`; return the page's path."""
    out = Path(out)
    files = out / REPORT_FILES
    shutil.rmtree(files, ignore_errors=True)
    files.mkdir(parents=True)
    spec = spec_of(table.meta)
    colors = class_colors(spec.palette)
    index = {p: i for i, p in enumerate(table.paths)}
    bought = _bought(out, selection)
    cards, thumbs_of = [], {}
    for row in selection["rows"]:
        thumbs = _thumbs(out, row, spec.input_size, colors, bought is not None)
        thumbs_of[row["rank"]] = thumbs
        classes = _top_classes(table, index.get(record_path(row)))
        cards.append(_card(row, thumbs, classes, _threshold(selection)))
    dups = _duplicates(out, selection, spec.input_size, thumbs_of)
    page = _page(table, selection, "\n".join(cards), dups, bought)
    atomic_write(out / REPORT_HTML, page.encode("utf-8"))
    return out / REPORT_HTML


# -------------------------------------------------------------------------------- pictures
def _thumb_size(shown: tuple[int, int]) -> tuple[int, int]:
    h, w = shown
    scale = min(THUMB[0] / max(h, 1), THUMB[1] / max(w, 1))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _save(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    buf = io.BytesIO()
    if path.suffix == ".jpg":
        Image.fromarray(array).save(buf, format="JPEG", quality=85)
    else:
        Image.fromarray(array).save(buf, format="PNG")
    atomic_write(path, buf.getvalue(), durable=False)


def _read_layer(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))
    except OSError:
        return None


def _thumbnail(path: str, input_size: tuple[int, int]) -> np.ndarray:
    """The picture of `path` at thumbnail size, in its own aspect ratio; DecodeError if it
    cannot be read."""
    from PIL import Image

    frame = decode_any(path, input_size)  # stretched to the model's frame, as the maps
    h, w = _thumb_size(frame.shown)
    return np.asarray(Image.fromarray(frame.image).resize((w, h), Image.Resampling.BILINEAR))


def _bought(out: Path, selection: dict[str, Any]) -> dict[str, Any] | None:
    """regions.json of a selection of regions (None for a selection of frames, or when the
    file is gone)."""
    if not buys_regions(selection):
        return None
    try:
        return json.loads((Path(out) / REGIONS_JSON).read_text())
    except (OSError, ValueError):
        return None


def outline_regions(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`image` [h, w, 3] with the edges of the regions of `mask` (any size; region id + 1 on
    a region's pixels, 0 elsewhere) drawn over it in OUTLINE."""
    from PIL import Image

    h, w = image.shape[:2]
    m = np.asarray(Image.fromarray(mask.astype(np.int32), mode="I").resize((w, h), Image.NEAREST))
    p = np.pad(m, 1)  # the picture's border is a region's edge too
    centre = p[1:-1, 1:-1]
    edge = (
        (centre != p[:-2, 1:-1])
        | (centre != p[2:, 1:-1])
        | (centre != p[1:-1, :-2])
        | (centre != p[1:-1, 2:])
    )
    edge &= m > 0  # inside the regions' own pixels: the picture around them stays whole
    drawn = image.copy()
    drawn[edge] = OUTLINE
    return drawn


def _thumbs(
    out: Path, row: dict[str, Any], input_size: tuple[int, int], colors: Any, regions: bool
) -> Thumbs:
    """Write a pick's thumbnail (its bought regions outlined, for a selection of regions),
    overlay and segmentation into report_files/."""
    rank, path = row["rank"], record_path(row)
    try:
        image = _thumbnail(path, input_size)
    except DecodeError as exc:
        return Thumbs(None, problem=f"cannot read the image: {exc.reason}")
    if regions:
        mask = read_region_mask(out, rank, path)
        if mask is not None:
            image = outline_regions(image, mask)
    name = f"{REPORT_FILES}/{rank:04d}"
    _save(image, out / f"{name}.jpg")
    dif_name, seg_name = layer_names(rank, path)
    dif, seg = _read_layer(out / MAPS / dif_name), _read_layer(out / MAPS / seg_name)
    size = (int(image.shape[0]), int(image.shape[1]))
    if dif is None or seg is None:
        return Thumbs(f"{name}.jpg", size=size, problem="no maps: run with --maps or --report")
    _save(overlay(image, dif), out / f"{name}.dif.jpg")
    _save(segmentation_rgb(seg, size, colors), out / f"{name}.seg.png")
    return Thumbs(f"{name}.jpg", f"{name}.dif.jpg", f"{name}.seg.png", size)


def _duplicates(
    out: Path,
    selection: dict[str, Any],
    input_size: tuple[int, int],
    thumbs_of: dict[int, Thumbs],
) -> str:
    """Rows of the near-duplicates table: the skipped image beside the pick it is close to
    (the pick's card thumbnail, `thumbs_of` by rank)."""
    rank_of = {record_path(r): r["rank"] for r in selection["rows"]}
    rows = []
    for n, d in enumerate(selection.get("near_duplicates", []), 1):
        path = record_path(d)
        of = record_path({"path": d["of"], "path_b64": d.get("of_b64")})
        try:
            image = _thumbnail(path, input_size)
            _save(image, out / REPORT_FILES / f"dup_{n:04d}.jpg")
            img = _img(f"{REPORT_FILES}/dup_{n:04d}.jpg", image.shape[:2], "near-duplicate")
        except DecodeError as exc:
            img = f"<span class=problem>{_e(exc.reason)}</span>"
        rank = rank_of.get(of)
        pick = thumbs_of.get(rank, Thumbs(None)) if rank is not None else Thumbs(None)
        rows.append(
            f"<tr><td>{img}</td><td title='{_e(_shown(path))}'>{_e(os.path.basename(path))}</td>"
            f"<td class=pick>{_img(pick.image, pick.size, f'pick #{rank}')}"
            f"#{rank if rank is not None else '?'} {_e(os.path.basename(of))}</td>"
            f"<td>{_num(d.get('cosine'))}</td></tr>"
        )
    return "\n".join(rows)


# ------------------------------------------------------------------------------------ html
def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _shown(path: str) -> str:
    """A path as text, bytes that are not UTF-8 as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _num(value: float | None, digits: int = 4) -> str:
    return "nan" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _img(src: str | None, size: tuple[int, int], alt: str) -> str:
    if src is None:
        return ""
    h, w = size
    return f"<img src='{_e(src)}' width={w} height={h} alt='{_e(alt)}' loading=lazy decoding=async>"


def _threshold(selection: dict[str, Any]) -> float:
    """Novelty above this is off-domain (the selection's --novel-threshold)."""
    return float(selection.get("novel_threshold") or NOVEL_THRESHOLD)


def _card(row: dict[str, Any], thumbs: Thumbs, classes: str, threshold: float) -> str:
    """One pick: rank, pictures, file name (full path on hover), every score, top classes; an
    off-domain pick (novelty above `threshold`) is marked."""
    path = record_path(row)
    pictures = "".join(
        _img(src, thumbs.size, alt)
        for src, alt in (
            (thumbs.image, "image"),
            (thumbs.difficulty, "difficulty overlay"),
            (thumbs.segmentation, "segmentation"),
        )
    )
    scores = " ".join(f"<span>{name} <b>{_num(row.get(name))}</b></span>" for name in SCORE_COLUMNS)
    problem = f"<p class=problem>{_e(thumbs.problem)}</p>" if thumbs.problem else ""
    novel = row.get("novelty") is not None and float(row["novelty"]) > threshold
    if novel:
        problem += f"<p class=novel>off-domain: novelty above {threshold:g}</p>"
    return (
        f"<figure class='card{' novel' if novel else ''}' data-rank={row['rank']}>"
        f"<div class=pics>{pictures}</div>"
        f"<figcaption><span class=rank>#{row['rank']}</span> "
        f"<span class=path title='{_e(_shown(path))}'>{_e(os.path.basename(path))}</span>"
        f"<div class=scores><span>score <b>{_num(row.get('score'))}</b></span> {scores}</div>"
        f"<div class=classes>{classes}</div>{problem}</figcaption></figure>"
    )


def _top_classes(table: Table, index: int | None, n: int = 3) -> str:
    """The n classes with the largest predicted share of an image, with their shares."""
    if table.fractions is None or index is None:
        return ""
    shares = np.nan_to_num(table.fractions[index])
    top = np.argsort(-shares, kind="stable")[:n]
    names = table.class_names
    return " ".join(f"{_e(names[c])} {100 * shares[c]:.0f}%" for c in top if shares[c] > 0)


def _summary(table: Table, selection: dict[str, Any], bought: dict[str, Any] | None) -> str:
    """The run: model (and its card), strategy and settings, pool, errors by reason, shortfall;
    for a selection of regions, what was bought and what labelling it costs."""
    model = selection.get("model", "")
    card = model_card(model)
    card_link = f" (<a href='{_e(card.as_uri())}'>model card</a>)" if card else " (no model card)"
    settings = ", ".join(_settings(selection))
    items = [
        ("model", f"<code>{_e(model)}</code>{card_link}"),
        (
            "strategy",
            f"<b>{_e(selection['strategy'])}</b>" + (f" ({settings})" if settings else ""),
        ),
        ("selected", f"<b id=selected>{selection['selected']}</b> of k = {selection['k']}"),
        ("pool", f"{len(table)} scored, {len(table.errors)} failed"),
        ("off-domain", f"<a href='#novel'>{_e(_off_domain_rule(table, selection))}</a>"),
        ("scores", f"<code>{_e(selection.get('scores', ''))}</code>"),
    ]
    if bought is not None:
        items.insert(3, ("regions bought", _regions_line(bought)))
    if selection.get("shortfall"):
        items.append(("fewer than k", _e("; ".join(selection["shortfall"]))))
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in items)
    return f"<table class=summary>{rows}</table>{_errors(table)}"


def _regions_line(bought: dict[str, Any]) -> str:
    """regions.json in words: regions and pixels bought, their share of the pool's, the cost."""
    opening = int(bought.get("frame_cost") or 0)
    cost = (
        f"labelling cost {bought['cost']:,} pixels ({opening:,} a frame opened)"
        if opening
        else f"labelling cost {bought['cost']:,} pixels (no frame-opening cost)"
    )
    return (
        f"<b id=bought>{bought['bought_regions']:,}</b> regions ({_e(bought['partition'])}) in "
        f"{bought['frames']:,} frames: <b>{bought['bought_pixels']:,}</b> pixels, "
        f"<b>{bought['bought_share']:.2%}</b> of the pool's {bought['pool_pixels']:,} "
        f"(budget {_e(bought.get('budget'))}: {bought['budget_pixels']:,} pixels); {cost}; "
        f"{_class_mix(bought)}outlined on each picture below"
    )


def _class_mix(bought: dict[str, Any]) -> str:
    """The bought pixels' shares by most-predicted class (the first five), or nothing."""
    mix = bought.get("bought_classes")
    total = sum((mix or {}).values())
    if not total:
        return ""
    shares = [f"{_e(c)} {p / total:.0%}" for c, p in list(mix.items())[:5]]
    more = ", ..." if len(mix) > 5 else ""
    return f"by predicted class <span id=mix>{', '.join(shares)}{more}</span>; "


def _settings(selection: dict[str, Any]) -> list[str]:
    """The selection's options that were set, as `name value` texts."""
    shown = []
    for key in ("seed", "diverse", "labeled", "balance", "per_group", "group_by"):
        value = selection.get(key)
        if value is None or (key == "seed" and selection.get("strategy") != "random"):
            continue
        if key == "balance":
            value = ", ".join(f"{c} {w:g}" for c, w in value.items()) or "uniform"
        shown.append(f"{key.replace('_', '-')} {_e(value)}")
    return shown


def _novel_rule(selection: dict[str, Any]) -> str:
    """What the selection did with off-domain images (its --max-novel-share or --keep-novel)."""
    share = selection.get("novel_share")
    if share is None:
        return "ranked like any other"
    return "never picked" if share == 0 else f"at most {share:g} of the picks"


def _novel_indices(table: Table, threshold: float) -> np.ndarray | None:
    """The pool's off-domain images (novelty above `threshold`); None when novelty is unknown."""
    novelty = table.scores.get("novelty")
    if novelty is None or np.all(np.isnan(novelty)):
        return None
    with np.errstate(invalid="ignore"):
        return np.flatnonzero(novelty > threshold)


def _off_domain_rule(table: Table, selection: dict[str, Any]) -> str:
    """One line: how many of the pool are off-domain and what the selection did with them."""
    threshold = _threshold(selection)
    off = _novel_indices(table, threshold)
    if off is None:
        return "unknown (the model carries no novelty statistics)"
    return f"{len(off)} of {len(table)} (novelty above {threshold:g}): {_novel_rule(selection)}"


def _off_domain(table: Table, selection: dict[str, Any]) -> str:
    """The pool's off-domain images (novelty above the threshold), furthest first, and what the
    selection did with them."""
    threshold = _threshold(selection)
    off = _novel_indices(table, threshold)
    if off is None:
        return "<p>Unknown: the model carries no novelty statistics.</p>"
    head = (
        f"<p><b id=off-domain>{len(off)}</b> of {len(table)} images are off-domain (novelty "
        f"above {threshold:g}: further from the training frames than that share of held-out "
        f"in-domain frames): {_novel_rule(selection)}.</p>"
    )
    if not len(off):
        return head
    novelty = table.scores["novelty"]
    order = off[np.argsort(-novelty[off], kind="stable")][:OFF_DOMAIN_LISTED]
    rows = "".join(
        f"<tr><td title='{_e(_shown(table.paths[i]))}'>{_e(os.path.basename(table.paths[i]))}"
        f"</td><td>{_num(float(novelty[i]))}</td></tr>"
        for i in order
    )
    return f"{head}<table class=novel><tr><th>image</th><th>novelty</th></tr>{rows}</table>"


def _errors(table: Table) -> str:
    if not table.errors:
        return ""
    counts = Counter(table.errors.values()).most_common()
    rows = "".join(f"<tr><td>{n}</td><td>{_e(reason)}</td></tr>" for reason, n in counts)
    head = "<tr><th>images</th><th>reason</th></tr>"
    return f"<h3>Errors by reason</h3><table class=errors>{head}{rows}</table>"


def _legend(table: Table) -> str:
    """The colour bar of difficulty and the classes' colours with their names."""
    spec = spec_of(table.meta)
    chips = "".join(
        f"<span class=chip><i style='background:rgb{tuple(rgb)}'></i>{_e(name)}</span>"
        for name, rgb in zip(spec.class_names, spec.palette, strict=True)
    )
    return (
        f"<div class=legend><div class=bar><div class=ramp style='background:{css_gradient()}'>"
        f"</div><span>0</span><span>{_e(DIFFICULTY_LABEL)}</span><span>1</span></div>"
        f"<div class=chips>{chips}</div></div>"
    )


def _histogram(name: str, pool: np.ndarray, picked: np.ndarray) -> str:
    """An SVG histogram of a score: the pool's share per bin (grey) beside the picks' (orange)."""
    pool, picked = pool[np.isfinite(pool)], picked[np.isfinite(picked)]
    if not len(pool):
        return ""
    lo, hi = float(pool.min()), float(pool.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, BINS + 1)
    shares = {
        "pool": np.histogram(pool, edges)[0] / len(pool),
        "picked": np.histogram(picked, edges)[0] / max(len(picked), 1),
    }
    top = max(float(v.max()) for v in shares.values()) or 1.0
    w, h, step = 300, 120, 300 / BINS
    bars = "".join(
        f"<rect x={i * step + shift:.1f} y={h * (1 - v / top):.1f} width={step / 2:.1f} "
        f"height={h * v / top:.1f} class={kind}><title>{kind}: {100 * v:.1f}%</title></rect>"
        for kind, shift in (("pool", 0.0), ("picked", step / 2))
        for i, v in enumerate(shares[kind])
        if v > 0
    )
    return (
        f"<figure class=hist><svg viewBox='0 0 {w} {h + 14}' width={w} height={h + 14} "
        f"role=img aria-label='{_e(name)} histogram'>{bars}"
        f"<text x=0 y={h + 12}>{_num(lo, 3)}</text>"
        f"<text x={w} y={h + 12} text-anchor=end>{_num(hi, 3)}</text></svg>"
        f"<figcaption>{_e(name)}</figcaption></figure>"
    )


def _histograms(table: Table, picked: np.ndarray) -> str:
    return "".join(
        _histogram(name, table.scores[name], table.scores[name][picked]) for name in SCORE_COLUMNS
    )


def _balance(table: Table, picked: np.ndarray) -> str:
    """Per class: the mean predicted share in the pool and in the picks, as bars."""
    if table.fractions is None or not len(table):
        return ""
    spec = spec_of(table.meta)
    pool = np.nanmean(table.fractions, axis=0)
    mine = np.nanmean(table.fractions[picked], axis=0) if len(picked) else np.zeros_like(pool)
    top = max(float(np.nanmax(pool)), float(np.nanmax(mine)), 1e-9)
    rows = "".join(
        f"<tr><th><i style='background:rgb{tuple(rgb)}'></i>{_e(name)}</th>"
        f"<td><div class=pool style='width:{100 * a / top:.1f}%'></div>"
        f"<div class=picked style='width:{100 * b / top:.1f}%'></div></td>"
        f"<td>{100 * a:.1f}%</td><td>{100 * b:.1f}%</td></tr>"
        for name, rgb, a, b in zip(
            spec.class_names, spec.palette, np.nan_to_num(pool), np.nan_to_num(mine), strict=True
        )
    )
    head = "<tr><th>class</th><th></th><th>pool</th><th>selection</th></tr>"
    return f"<table class=balance>{head}{rows}</table>"


def _page(
    table: Table,
    selection: dict[str, Any],
    cards: str,
    duplicates: str,
    bought: dict[str, Any] | None = None,
) -> str:
    index = {p: i for i, p in enumerate(table.paths)}
    picked = np.array(
        [index[p] for r in selection["rows"] if (p := record_path(r)) in index], dtype=np.int64
    )
    dup_table = (
        "<table class=dups><tr><th></th><th>skipped</th><th>near-duplicate of</th>"
        f"<th>cosine</th></tr>{duplicates}</table>"
        if duplicates
        else "<p>None: no near-duplicate was skipped (see <code>--diverse</code>).</p>"
    )
    title = f"dealseg selection: {selection['strategy']}, top {selection['k']}"
    return f"""<!DOCTYPE html>
<html lang=en><head><meta charset=utf-8>
<meta http-equiv=Content-Security-Policy content="{_CSP}">
<meta name=viewport content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_STYLE}</style></head>
<body><main>
<h1>{_e(title)}</h1>
<section id=summary>{_summary(table, selection, bought)}</section>
<section id=key><h2>Reading the maps</h2>{_legend(table)}
<p>Each card: the image, the difficulty the model predicts over it, and its predicted
segmentation. The rank is the order of <code>selection.txt</code>; <i>score</i> is the
strategy's.</p>
</section>
<section id=scores><h2>Scores: pool <span class=pool-key>grey</span>, selection
<span class=picked-key>orange</span></h2>
<div class=hists>{_histograms(table, picked)}</div></section>
<section id=classes><h2>Class balance (mean predicted share)</h2>{_balance(table, picked)}</section>
<section id=sheet><h2>The selection, ranked</h2><div class=sheet>{cards}</div></section>
<section id=duplicates><h2>Near-duplicates skipped</h2>{dup_table}</section>
<section id=novel><h2>Off-domain frames</h2>{_off_domain(table, selection)}</section>
</main></body></html>
"""


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1400px;margin:auto;padding:12px 20px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:2px}
table{border-collapse:collapse}th,td{text-align:left;padding:2px 8px;vertical-align:top}
.summary th{color:#555;font-weight:normal}
code{font-size:12px;word-break:break-all}
.legend{display:flex;flex-wrap:wrap;gap:24px;align-items:center}
.bar{display:grid;grid-template-columns:auto 1fr auto;width:320px;gap:0 4px;font-size:12px}
.ramp{grid-column:1/4;height:14px;border:1px solid #999}
.bar span:nth-child(3){text-align:center}
.chips{display:flex;flex-wrap:wrap;gap:4px 12px;max-width:800px}
.chip i,.balance i{display:inline-block;width:12px;height:12px;margin-right:4px;
 vertical-align:-1px;border:1px solid #888}
.hists{display:flex;flex-wrap:wrap;gap:16px 48px}.hist{margin:0}
.hist figcaption{text-align:center}.hist text{font-size:10px}
rect.pool,.balance .pool,.pool-key{fill:#999;background:#999}
rect.picked,.balance .picked,.picked-key{fill:#e8710a;background:#e8710a}
.pool-key,.picked-key{color:#fff;padding:0 4px;border-radius:3px}
.balance td:nth-child(2){width:320px}.balance div{height:7px;margin:2px 0}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(630px,1fr));gap:10px}
.card{margin:0;background:#fff;border:1px solid #ddd;border-radius:4px;padding:6px}
.pics{display:flex;gap:4px;flex-wrap:wrap}.pics img{max-width:200px;height:auto}
.rank{font-weight:bold;font-size:16px}.path{font-family:monospace}
.scores span{margin-right:10px}.classes{color:#555;font-size:12px}
.problem{color:#a00;font-size:12px;margin:2px 0}
.novel{color:#a05000;font-size:12px;margin:2px 0}.card.novel{border-color:#e08000}
.dups img{max-width:160px;height:auto}
@media (max-width:700px){.sheet{grid-template-columns:1fr}}
"""
