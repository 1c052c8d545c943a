"""Browsable offline reports: ``index.html`` in a reconstruct/demo output folder (axial, coronal and
sagittal views with a slice slider each, the axial one alone for a single slice; window/level, the methods
side by side, the uncertainty map, the settings) and in a batch output root (a sortable table of series with
thumbnails and links).

Self-contained and static: one sprite PNG per volume and plane in ``index_files/`` (every slice, 8-bit over
a display range common to the volumes of the page), no network, no server. Window/level acts in the
browser through an SVG linear transfer filter, so it never needs the pixels in JavaScript (file:// pages
may not read image pixels); its finest grey step is the display range / 255, shown on the page.
The URL hash sets the view, e.g. ``index.html#axial=5&coronal=10&wl=400,40`` (slices counted from 1, as the
page shows them; what the tests use).
"""
from __future__ import annotations

import html
import json
import math
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from medrecon.io import atomic_path, read_volume
from medrecon.volume import Volume

from .outputs import PLANES, default_window, shown_planes, write_json, z_stretch

ASSETS = "index_files"
MAX_TILE = 256  # pixels: longest side of one slice in a sprite (larger slices are downsampled)
TILE_PAD = 2  # pixels of each tile's own edge repeated around it in the sprite
VIEW_PX = 256  # CSS pixels of the largest extent (mm) of the three planes
PAGE_METRIC_VOXELS = 64e6  # compute PSNR/SSIM against the reference up to this size
#: the brain window is coarse here: the sprites' 8 bits over -1000..1300 HU are 9 HU a grey step (9 steps in W 80)
CT_PRESETS = [["soft tissue", 400, 40], ["lung", 1500, -600], ["bone", 1800, 400], ["brain (coarse)", 80, 40]]


def plane_slices(data: np.ndarray, plane: str) -> np.ndarray:
    """The stack of 2D slices of a (Z, Y, X) volume for a plane, oriented for display as in preview.png:
    axial (y down, x across), coronal and sagittal with superior at the top."""
    if plane == "axial":
        return data
    if plane == "coronal":
        return np.moveaxis(data[::-1], 1, 0)  # (Y, Z, X)
    return np.moveaxis(data[::-1], 2, 0)  # (X, Z, Y)


def plane_extent_mm(vol: Volume, plane: str) -> tuple[float, float]:
    """(width, height) in mm of one slice of the plane."""
    (sx, sy, sz), (nz, ny, nx) = vol.spacing, vol.shape
    return {"axial": (nx * sx, ny * sy), "coronal": (nx * sx, nz * sz), "sagittal": (ny * sy, nz * sz)}[plane]


def write_sprite(slices: np.ndarray, lo: float, hi: float, path: Path) -> dict:
    """All slices on a grid of ceil(sqrt(n)) columns, 8-bit over [lo, hi], each tile framed by ``TILE_PAD``
    copies of its own edge pixels (an enlarged view interpolates into the frame, not into the next slice);
    returns the grid layout."""
    n, h, w = slices.shape
    # each axis on its own: a coronal tile of 5 slices of 512² kept 2 rows for its 5 slices under one scale
    th, tw = max(1, round(h * min(1.0, MAX_TILE / h))), max(1, round(w * min(1.0, MAX_TILE / w)))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    ch, cw = th + 2 * TILE_PAD, tw + 2 * TILE_PAD
    sheet = np.zeros((rows * ch, cols * cw), np.uint8)
    for k in range(n):  # slice by slice in float32: the whole volume in float64 took 8x its size (2 GB at 200 x 512²)
        grey = np.clip((slices[k].astype(np.float32) - lo) * np.float32(255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)
        tile = grey if (th, tw) == (h, w) else np.asarray(Image.fromarray(grey).resize((tw, th), Image.BILINEAR))
        r, c = divmod(k, cols)
        sheet[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] = np.pad(tile, TILE_PAD, mode="edge")
    Image.fromarray(sheet).save(path, optimize=True)
    return {"src": f"{ASSETS}/{path.name}", "n": n, "cols": cols, "rows": rows, "tile": [tw, th], "pad": TILE_PAD}


def _thumbnail(image: np.ndarray, spacing_xy, size: int = 96) -> Image.Image:
    """A size x size thumbnail of a slice at its true aspect (mm), centred on black (a 48 x 32 slice was
    stretched 1.5x)."""
    h_mm, w_mm = image.shape[0] * spacing_xy[1], image.shape[1] * spacing_xy[0]
    scale = size / max(h_mm, w_mm)
    w, h = max(1, round(w_mm * scale)), max(1, round(h_mm * scale))
    out = Image.new("L", (size, size))
    out.paste(Image.fromarray(image).resize((w, h), Image.BILINEAR), ((size - w) // 2, (size - h) // 2))
    return out


def display_range(base: Volume, window: tuple[float, float]) -> tuple[float, float]:
    """The values the 8-bit sprites span: ``base``'s 0.05-99.95 percentiles (the reference when there is
    one, so that one method's streaks do not coarsen every grey step), widened to hold the initial window."""
    lo, hi = (float(v) for v in np.percentile(base.data, [0.05, 99.95]))
    lo, hi = min(lo, float(window[0])), max(hi, float(window[1]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def write_series_page(folder, volumes: list[tuple[str, Volume | Path]] | None = None,
                      window: tuple[float, float] | None = None, title: str | None = None,
                      report: dict | None = None, std: Volume | None = None) -> Path:
    """Write ``folder/index.html`` and ``folder/index_files/``; ``volumes`` default to what the folder holds
    (reference, a self-adapted run's first pass, recon.nii.gz), ``std`` to its std.nii.gz (the uncertainty map),
    ``report`` to its report.json. Returns the page's path."""
    folder = Path(folder)
    report = _json(folder / "report.json") if report is None else report
    vols = [(label, v if isinstance(v, Volume) else read_volume(v)) for label, v in (volumes or _found(folder))]
    if not vols:
        raise FileNotFoundError(f"{folder}: no volume to show (recon.nii.gz)")
    shown = [(label, v.nearest_lps()) for label, v in vols]  # oriented as preview.png; metrics on the stored axes
    if std is None and volumes is None and (folder / "std.nii.gz").is_file():
        std = read_volume(folder / "std.nii.gz")
    std = None if std is None else std.nearest_lps()
    assets = folder / ASSETS
    assets.mkdir(exist_ok=True)
    if window is None:
        w = (report.get("config") or {}).get("outputs", {}).get("window")
        window = tuple(w) if w else default_window(vols[-1][1].data)
    ref = next((v for label, v in vols if label == "reference"), None)
    base = ref if ref is not None else vols[-1][1]
    lo, hi = display_range(base, window)
    ct = (report.get("config") or {}).get("modality") == "ct" or lo <= -500  # HU
    if ct:  # the presets' grey range too, as far as the values go (bone stopped at the 99.95th percentile: 81 % grey)
        hi = max(hi, min(float(base.data.max()), max(c + w / 2 for _, w, c in CT_PRESETS)))
    unit = str((report.get("intensity") or {}).get("unit") or ("HU" if ct else ""))  # the demo's report names none
    planes = shown_planes(shown[0][1])
    rows = [_row(label, v, lo, hi, assets, i, planes) for i, (label, v) in enumerate(shown)]
    if std is not None:  # its own grey scale, said in its label (white is not the other rows' top)
        top = max(float(np.percentile(std.data, 99.5)), 1e-6)
        what = "an antithetic pair's spread" if report.get("antithetic_samples") else "posterior std"  # README
        rows.append({**_row(f"uncertainty ({what}; black 0, white {top:.4g} {unit})".replace(" )", ")"), std,
                            0.0, top, assets, len(rows), planes), "fixed": True})
    metrics = _metrics(folder, report, ref, vols)
    thumb = plane_slices(shown[-1][1].data, "axial")
    thumb_lo, thumb_hi = window
    _thumbnail(np.clip((thumb[len(thumb) // 2] - thumb_lo) / (thumb_hi - thumb_lo) * 255, 0, 255).astype(np.uint8),
               shown[-1][1].spacing[:2]).save(assets / "thumb.png")
    summary = {"title": title or folder.name, "methods": [label for label, _ in vols], "metrics": metrics,
               "solver": ((report.get("config") or {}).get("solver") or {}).get("name"),
               "task": (report.get("config") or {}).get("task"),
               "seconds": (report.get("timings_s") or {}).get("total")}
    write_json(assets / "summary.json", summary)
    unit = html.escape(unit)  # the boxes' unit: HU, or MR's normalised magnitude
    view = {"lo": lo, "hi": hi, "window": list(window), "rows": rows, "presets": CT_PRESETS if ct else [],
            "planes": list(planes), "size": {p: _css_size(shown[0][1], p) for p in planes},
            "stretch": z_stretch(shown[0][1])}
    page = _fill(SERIES_HTML, TITLE=html.escape(summary["title"]), STEP=f"{(hi - lo) / 255:.3g}",
                 RANGE=f"{lo:.4g} to {hi:.4g} {unit}".rstrip(),
                 METRICS=_metrics_table(metrics, (report.get("vs_reference") or {}).get("notes")),
                 SETTINGS=html.escape(_settings(report)), VIEW=json.dumps(view).replace("</", "<\\/"))
    return _write(folder / "index.html", page)


def _row(label: str, vol: Volume, lo: float, hi: float, assets: Path, i: int, planes: tuple[str, ...]) -> dict:
    sprites = {p: write_sprite(plane_slices(vol.data, p), lo, hi, assets / f"v{i}_{p}.png") for p in planes}
    return {"label": label, "sprites": sprites, "fixed": False}


def _css_size(vol: Volume, plane: str) -> list[int]:
    """A view's size in CSS pixels: one mm scale for the three planes, a thin slab's z stretched by
    ``z_stretch`` (its coronal view was 256 x 4 px on a 4-slice slab; preview.png stretched it already)."""
    k = z_stretch(vol)
    extent = {p: (w, h * (k if p != "axial" else 1)) for p in PLANES for w, h in [plane_extent_mm(vol, p)]}
    scale = VIEW_PX / max(max(e) for e in extent.values())
    w, h = extent[plane]
    return [max(1, round(w * scale)), max(1, round(h * scale))]


def page_volumes(reference, first_pass, recon) -> list[tuple[str, Volume | Path]]:
    """A reconstruction's rows, labelled as the page and its metrics name them: the reference, a self-adapted
    run's first pass and the result, each a Volume or a file (None: not there)."""
    rows = [("reference", reference), ("first pass (before self-adaptation)", first_pass), ("reconstruction", recon)]
    return [(label, v) for label, v in rows if v is not None]


def _found(folder: Path) -> list[tuple[str, Path]]:
    """The rows of a reconstruction folder, from its files."""
    def there(*paths):
        return next((p for p in paths if p.is_file()), None)
    return page_volumes(there(folder / "simulation" / "reference.nii.gz", folder / "reference.nii.gz"),
                        there(folder / "self_adapt" / "first_pass.nii.gz"), there(folder / "recon.nii.gz"))


def _metrics(folder: Path, report: dict, ref: Volume | None, vols) -> dict:
    """{label: {"psnr_axial": .., ...}}: the folder's metrics.json (demo), the run's own scores in ``report``
    (recomputing them took 21 s and 2.4 GB on 100 x 512^2), else computed against the reference over its range."""
    given = _json(folder / "metrics.json")
    if given:
        return {k: {m: v for m, v in row.items() if m.startswith(("psnr_", "ssim_"))} for k, row in given.items()}
    from medrecon.metrics import flat_metrics, per_axis_metrics
    scored = {"first pass (before self-adaptation)": (report.get("self_adapt") or {}).get("first_pass_scores"),
              "reconstruction": report.get("vs_reference")}
    if scored["reconstruction"]:
        return {label: flat_metrics(m) for label, m in scored.items() if m and label in dict(vols)}
    if ref is None or ref.data.size > PAGE_METRIC_VOXELS:
        return {}
    out = {}
    for label, v in vols:
        if v is not ref and v.shape == ref.shape:
            m = per_axis_metrics(ref.data, v.data)
            out[label] = flat_metrics(m)
    return out


def _metrics_table(metrics: dict, notes=None) -> str:
    """The metrics as a table ('—' where a plane cannot be scored), the scoring's notes under it."""
    if not metrics:
        return "<p>No reference: no metrics.</p>"
    cols = list(next(iter(metrics.values())))
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in cols)
    body = "".join(f"<tr><td>{html.escape(k)}</td>" + "".join(f"<td>{'—' if m.get(c) is None else m[c]}</td>"
                                                          for c in cols) + "</tr>" for k, m in metrics.items())
    said = "".join(f"<li>{html.escape(str(n))}</li>" for n in notes or [])
    return f"<table><tr><th>method</th>{head}</tr>{body}</table>" + (f"<ul class=\"lab\">{said}</ul>" if said else "")


def _settings(report: dict) -> str:
    keep = {k: report[k] for k in ("created", "command", "config", "methods", "device", "prior", "seed",
                                   "network_evaluations_per_slice", "timings_s", "peak_memory", "software")
            if k in report}
    return json.dumps(keep, indent=1, default=str)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _fill(template: str, **parts: str) -> str:
    """The template's {{NAME}} places filled in one pass (a title holding '{{VIEW}}' stays that text)."""
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda m: parts[m[1]], template)


def _write(path: Path, text: str) -> Path:
    with atomic_path(path, overwrite=True) as tmp:  # a temporary name that a later run clears if left behind
        tmp.write_text(text, encoding="utf-8", errors="backslashreplace")  # a folder name that is not UTF-8
    return path


# ------------------------------------------------------------------------------------------ batch index
def write_batch_index(root, rows: list[dict], title: str = "medrecon batch") -> Path:
    """``root/index.html``: one table row per manifest row, linking each finished series' page; the input folder
    (the manifest's ``input_path``) names a row that has no output or UID to go by (an unreadable folder)."""
    root = Path(root)
    lines = []
    for r in rows:
        op = r.get("output_path") or ""
        out = root / op if op else Path("")  # manifests hold paths relative to the root (or absolute ones)
        s = _json(out / ASSETS / "summary.json") if out.name else {}
        page = out / "index.html"
        rel = os.path.relpath(out, root) if out.name else ""
        link = (f'<a href="{html.escape(rel)}/index.html">{html.escape(out.name)}</a>' if page.is_file()
                else html.escape(out.name))
        thumb = (f'<img src="{html.escape(rel)}/{ASSETS}/thumb.png" width="64" height="64" alt="">'
                 if (out / ASSETS / "thumb.png").is_file() else "")
        rec = (s.get("metrics") or {}).get((s.get("methods") or [""])[-1], {})
        earlier = r.get("status") not in ("done", "skipped")  # a conflict's or failure's folder: an earlier run's

        def of_output(v):
            return f"{v} (earlier output)" if earlier and v not in ("", None) else ("" if v is None else v)
        text = [r.get("series_uid", ""), r.get("status", ""), of_output(s.get("solver")), of_output(s.get("task")),
                r.get("seconds", ""), of_output(rec.get("psnr_axial")), of_output(rec.get("ssim_axial")),
                r.get("error", "")]
        cells = [thumb, html.escape(r.get("input_path") or ""), link, *(html.escape(str(c)) for c in text)]
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    page = _fill(BATCH_HTML, TITLE=html.escape(title), ROWS="\n".join(lines),
                 COUNTS=html.escape(", ".join(f"{n} {s}" for s, n in _counts(rows).items())))
    root.mkdir(parents=True, exist_ok=True)
    return _write(root / "index.html", page)


def _counts(rows) -> dict:
    out: dict[str, int] = {}
    for r in rows:
        out[r.get("status", "")] = out.get(r.get("status", ""), 0) + 1
    return out


STYLE = """body{font:14px sans-serif;background:#111;color:#ddd;margin:1em}a{color:#8cf}
table{border-collapse:collapse}td,th{border:1px solid #444;padding:2px 6px;text-align:left}
th{cursor:pointer;background:#222}pre{background:#1a1a1a;padding:6px;max-height:30em;overflow:auto}"""

SERIES_HTML = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{{TITLE}}</title><style>""" + STYLE + """
.view{background-repeat:no-repeat;filter:url(#wl);image-rendering:auto;border:1px solid #333}
.fixed{filter:none}#controls input{width:6em}.cell{display:inline-block;vertical-align:top;margin:2px;position:relative}.lab{font-size:12px;color:#aaa}
.side{position:absolute;font:bold 11px sans-serif;color:#fc6;text-shadow:0 0 2px #000;pointer-events:none}
</style></head><body>
<svg width="0" height="0" style="position:absolute"><filter id="wl" color-interpolation-filters="sRGB">
<feComponentTransfer><feFuncR id="fr" type="linear"/><feFuncG id="fg" type="linear"/><feFuncB id="fb" type="linear"/>
</feComponentTransfer></filter></svg>
<h1>{{TITLE}}</h1>
<div id="controls">Window <input id="ww" type="text" inputmode="decimal" size="7"> Level <input id="wc" type="text"
inputmode="decimal" size="7"> <span id="presets"></span> <span class="lab">display range {{RANGE}}, grey step {{STEP}}</span><br>
<span id="sliders"></span></div><div id="rows"></div>
<h2>Metrics</h2>{{METRICS}}<h2>Settings</h2><pre>{{SETTINGS}}</pre>
<script>
const V = {{VIEW}};
const planes = V.planes, idx = {};  // a single slice: axial only
// the patient's sides at each view's left, right, top and bottom edge (the views are shown in LPS order, as
// preview.png: radiological, the patient's right on the left; anterior and superior at the top)
const SIDES = {axial: ["R", "L", "A", "P"], coronal: ["R", "L", "S", "I"], sagittal: ["A", "P", "S", "I"]};
function cssPerPixel(s, w, h) { return [w / s.tile[0], h / s.tile[1]]; }  // a view's CSS px per sprite px
function place(k, p) {  // show slice k of plane p in every row
  idx[p] = k;
  document.getElementById(p + "-label").textContent = (k + 1) + " / " + V.rows[0].sprites[p].n;
  const [w, h] = V.size[p];
  V.rows.forEach((r, i) => {
    const s = r.sprites[p], el = document.getElementById("v" + i + "-" + p), [sx, sy] = cssPerPixel(s, w, h);
    el.style.backgroundPosition = (-((k % s.cols) * (s.tile[0] + 2 * s.pad) + s.pad) * sx) + "px " +
      (-(Math.floor(k / s.cols) * (s.tile[1] + 2 * s.pad) + s.pad) * sy) + "px";
    el.dataset.slice = k;
  });
}
function setWL(w, c, typing) {  // grey = (v - (c - w/2)) / w with v = lo + t (hi - lo), t the stored grey in [0, 1]
  if (String(w).trim() === "" || String(c).trim() === "" || !isFinite(Number(w)) || !isFinite(Number(c)) ||
      Number(w) <= 0) return;  // a value half typed ("-", "0.", "") changes nothing yet
  w = Number(w); c = Number(c);
  const slope = (V.hi - V.lo) / w, icpt = (V.lo - c + w / 2) / w;
  for (const id of ["fr", "fg", "fb"]) {
    const f = document.getElementById(id); f.setAttribute("slope", slope); f.setAttribute("intercept", icpt); }
  if (!typing) {  // a preset or the link: show it; what is being typed is left as typed
    document.getElementById("ww").value = +w.toPrecision(5); document.getElementById("wc").value = +c.toPrecision(5); }
}
const sl = document.getElementById("sliders"), rows = document.getElementById("rows");
for (const p of planes) {
  const n = V.rows[0].sprites[p].n;
  sl.insertAdjacentHTML("beforeend", `${p} <input id="${p}-slider" type="range" min="0" max="${n - 1}"
    value="${Math.floor(n / 2)}"> <span id="${p}-label"></span> &nbsp; `);
}
V.rows.forEach((r, i) => {
  let h = `<div><div class="lab">${r.label}</div>`;
  for (const p of planes) {
    const s = r.sprites[p], [w, hh] = V.size[p], [sx, sy] = cssPerPixel(s, w, hh);
    const [l, rt, t, b] = SIDES[p], at = (x, y, c) => `<span class="side" style="${x};${y}">${c}</span>`;
    h += `<div class="cell"><div id="v${i}-${p}" class="view${r.fixed ? " fixed" : ""}" style="width:${w}px;` +
      `height:${hh}px;background-image:url('${s.src}');background-size:${s.cols * (s.tile[0] + 2 * s.pad) * sx}px ${s.rows * (s.tile[1] + 2 * s.pad) * sy}px"></div>` +
      at("left:3px", `top:${hh / 2 - 6}px`, l) + at(`left:${w - 10}px`, `top:${hh / 2 - 6}px`, rt) +
      at(`left:${w / 2 - 3}px`, "top:1px", t) + at(`left:${w / 2 - 3}px`, `top:${hh - 13}px`, b) +
      `<div class="lab">${p}${p !== "axial" && V.stretch > 1 ? " (z x" + V.stretch + ")" : ""}</div></div>`;
  }
  rows.insertAdjacentHTML("beforeend", h + "</div>");
});
for (const p of planes) {
  const s = document.getElementById(p + "-slider");
  s.addEventListener("input", () => place(Number(s.value), p));
  place(Number(s.value), p);
}
for (const id of ["ww", "wc"]) document.getElementById(id).addEventListener("input", () =>
  setWL(document.getElementById("ww").value, document.getElementById("wc").value, true));
const [lo0, hi0] = V.window; setWL(hi0 - lo0, (hi0 + lo0) / 2);
V.presets.concat([["initial", hi0 - lo0, (hi0 + lo0) / 2]]).forEach(([name, w, c]) => {
  const b = document.createElement("button"); b.textContent = name; b.title = `W ${w} L ${c}`;
  b.onclick = () => setWL(w, c); document.getElementById("presets").appendChild(b); });
function fromHash() {  // #axial=5&coronal=3&wl=400,40 (slices counted from 1, as shown): moves the sliders
  for (const kv of location.hash.slice(1).split("&")) {
    const [k, v] = kv.split("=");
    if (planes.includes(k)) { const s = document.getElementById(k + "-slider"); s.value = Number(v) - 1;
      s.dispatchEvent(new Event("input")); }
    if (k === "wl") { const [w, c] = v.split(","); setWL(w, c); }
  }
}
window.addEventListener("hashchange", fromHash); fromHash();
</script></body></html>
"""

#: what tells a batch page medrecon wrote from a user's index.html (in every batch page since the first)
BATCH_PAGE_MARK = "<th>series</th><th>SeriesInstanceUID</th><th>status</th>"
BATCH_HTML = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{{TITLE}}</title><style>""" + STYLE + """
</style></head><body><h1>{{TITLE}}</h1><p>{{COUNTS}}. Click a column heading to sort.</p>
<table id="t"><thead><tr><th></th><th>input</th>""" + BATCH_PAGE_MARK + """<th>method</th>
<th>task</th><th>seconds</th><th>PSNR axial</th><th>SSIM axial</th><th>error</th></tr></thead><tbody>
{{ROWS}}
</tbody></table>
<script>
document.querySelectorAll("#t th").forEach((th, col) => th.addEventListener("click", () => {
  const body = document.querySelector("#t tbody"), rows = [...body.rows], dir = th.dataset.dir === "1" ? -1 : 1;
  th.dataset.dir = dir;
  const key = r => { const t = r.cells[col].textContent.trim();  // a number only if it is all number (a UID
    return /^-?\\d+(\\.\\d+)?([eE][-+]?\\d+)?$/.test(t) ? Number(t) : t; };   // '1.3.6...' is text, not 1.3)
  rows.sort((a, b) => { const x = key(a), y = key(b);
    return (typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : typeof x === "number" ? -1 : 1) * dir; });
  rows.forEach(r => body.appendChild(r));
}));
</script></body></html>
"""
