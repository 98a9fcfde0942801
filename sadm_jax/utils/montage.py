"""PNG montage building blocks: grey and colour-mapped panels, contours, a colour bar, titled grids."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

# Inferno-like colour ramp for anomaly maps (anchors at 0, .25, .5, .75, 1).
_RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], float)
TITLE_COLOUR = (255, 255, 255)  # column titles and colour-bar text
ROW_TITLE_COLOUR = (255, 255, 0)
_PAD = 3  # pixels around a line of text
_BAR_WIDTH = 12


def grey(v: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
  """[h, w] floats -> uint8 [h, w, 3] grey, [lo, hi] mapped to [0, 255] (clipped)."""
  g = np.clip((np.asarray(v, np.float64) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
  return np.repeat((255.0 * g + 0.5).astype(np.uint8)[..., None], 3, axis=-1)


def colormap(v: np.ndarray, vmax: float) -> np.ndarray:
  """[h, w] non-negative scores -> uint8 [h, w, 3] on the inferno-like ramp over [0, vmax].

  The ramp's brightness (sum of channels) increases monotonically from 0 to vmax. (The
  reference plotted A on [0, max + 0.01].)
  """
  t = np.clip(np.asarray(v, np.float64) / max(vmax, 1e-12), 0.0, 1.0) * (len(_RAMP) - 1)
  i = np.minimum(np.floor(t).astype(int), len(_RAMP) - 2)
  f = (t - i)[..., None]
  return ((1 - f) * _RAMP[i] + f * _RAMP[i + 1] + 0.5).astype(np.uint8)


def contour(mask: np.ndarray) -> np.ndarray:
  """The boundary voxels of a boolean mask: inside, with a 4-neighbour outside (or at the edge)."""
  b = np.asarray(mask, bool)
  return b & ~ndimage.binary_erosion(b, border_value=0)


# ----------------------------------------------------------------------------- text


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  return ImageFont.load_default()


def _line_height() -> int:
  """Pixels of one line of the default font (ascent to descent of 'Ag')."""
  return int(_font().getbbox("Ag")[3]) + 1


def _text_width(text: str) -> int:
  return int(np.ceil(_font().getlength(text)))


def _wrap(text: str, width: int) -> list[str]:
  """Greedy word wrap of `text` to lines at most `width` pixels wide (a longer word stays whole)."""
  lines: list[str] = []
  for word in text.split():
    if lines and _text_width(lines[-1] + " " + word) <= width:
      lines[-1] += " " + word
    else:
      lines.append(word)
  return lines


def _text_block(lines: Sequence[str], width: int, height: int, colour, background: int,
                centre: bool) -> np.ndarray:
  """uint8 [height, width, 3]: `lines` drawn top-down from `_PAD`, centred or left-aligned
  (clipped to the block)."""
  img = Image.new("RGB", (max(width, 1), max(height, 1)), (background,) * 3)
  draw = ImageDraw.Draw(img)
  step = _line_height()
  for n, line in enumerate(lines):
    x = max((width - _text_width(line)) // 2, 0) if centre else _PAD
    draw.text((x, _PAD + n * step), line, fill=colour, font=_font())
  return np.asarray(img)[:height, :width]


# ----------------------------------------------------------------------------- colour bar


def colour_bar(height: int, vmin: float, vmax: float, label: str, background: int = 0
               ) -> np.ndarray:
  """uint8 [height, w, 3]: `label` on top, below it a vertical bar on the `colormap` ramp, vmax at
  its top and vmin at its bottom, each end ticked and labelled with its value (`.3g`).

  `w` fits the label and the tick labels. Raises ValueError when `height` leaves no room for the
  bar (less than four lines of text).
  """
  line = _line_height()
  top = line + 2 * _PAD + line // 2  # label strip, then half a tick label above the bar
  bottom = height - line // 2 - _PAD  # half a tick label below it
  if bottom - top < 2 * line:
    raise ValueError(f"colour_bar: height {height} leaves no room for the bar "
                     f"(at least {top + 2 * line + line // 2 + _PAD} pixels)")
  ticks = [f"{vmax:.3g}", f"{vmin:.3g}"]
  bar_x = _PAD
  text_x = bar_x + _BAR_WIDTH + 6
  width = max(text_x + max(_text_width(t) for t in ticks), _text_width(label)) + 2 * _PAD
  img = Image.new("RGB", (width, height), (background,) * 3)
  draw = ImageDraw.Draw(img)
  draw.text((_PAD, _PAD), label, fill=TITLE_COLOUR, font=_font())
  out = np.array(img)
  t = np.linspace(1.0, 0.0, bottom - top)  # top row = vmax
  out[top:bottom, bar_x:bar_x + _BAR_WIDTH] = colormap(t, 1.0)[:, None, :]
  img = Image.fromarray(out)
  draw = ImageDraw.Draw(img)
  for y, text in ((top, ticks[0]), (bottom - 1, ticks[1])):
    draw.line([(bar_x + _BAR_WIDTH, y), (bar_x + _BAR_WIDTH + 3, y)], fill=TITLE_COLOUR)
    draw.text((text_x, y - line // 2), text, fill=TITLE_COLOUR, font=_font())
  return np.asarray(img).copy()


# ----------------------------------------------------------------------------- grid


def _place(canvas: np.ndarray, panel: np.ndarray, y: int, x: int, h: int, w: int) -> None:
  """Pastes `panel` centred in the cell [y, y + h) × [x, x + w) of `canvas`."""
  ph, pw = panel.shape[:2]
  top, left = y + (h - ph) // 2, x + (w - pw) // 2
  canvas[top:top + ph, left:left + pw] = panel


def grid(rows: Sequence[Sequence[np.ndarray | None]], col_titles: Sequence[str | None] | None = None,
         row_titles: Sequence[str | None] | None = None, right: np.ndarray | None = None, *,
         gap: int = 4, background: int = 0) -> np.ndarray:
  """Lays panels out in a grid with titles; returns uint8 [H, W, 3].

  rows: one list of panels (uint8 [h, w, 3]; None = an empty cell) per row. A column is as wide
    as its widest panel, a row as tall as its tallest; each panel is centred in its cell and
    cells are `gap` pixels of `background` apart.
  col_titles: one title per column (None = untitled), drawn in a strip above the first row,
    centred over its column and word-wrapped to the column's width (the strip grows to the
    longest title's line count).
  row_titles: one title per row, each drawn left-aligned in a one-line strip above its row.
  right: an extra image (e.g. `colour_bar`) placed right of the last column, `gap` pixels away,
    its top level with the first row of panels.
  Text uses PIL's default font.

  The evaluation montage (`evaluate.report.montage`) is one row per slice with col_titles
  ("input", "reconstruction", "anomaly map", "prediction (red) vs ground truth (green)") and
  right = colour_bar(...) of the anomaly map; a cohort montage is one row per subject of
  (axial, coronal, sagittal) panels with row_titles such as "Brats21 BraTS2021_00003" and
  col_titles ("axial", "coronal", "sagittal"). Panels of one column may differ in size (e.g.
  sagittal vs axial slices of different subjects): they are centred, not stretched.
  """
  rows = [list(r) for r in rows]
  ncols = max([len(r) for r in rows] + [len(col_titles or ())])
  for r, row in enumerate(rows):
    for c, p in enumerate(row):
      if p is not None and (p.dtype != np.uint8 or p.ndim != 3 or p.shape[-1] != 3):
        raise ValueError(f"grid: panel ({r}, {c}) must be uint8 [h, w, 3], got {p.dtype} "
                         f"{p.shape}")
  if row_titles is not None and len(row_titles) != len(rows):
    raise ValueError(f"grid: {len(row_titles)} row titles for {len(rows)} rows")
  widths = [max([r[c].shape[1] for r in rows if c < len(r) and r[c] is not None] + [1])
            for c in range(ncols)]
  heights = [max([p.shape[0] for p in r if p is not None] + [1]) for r in rows]
  xs = [sum(widths[:c]) + gap * c for c in range(ncols)]
  grid_w = xs[-1] + widths[-1] if ncols else 0
  line = _line_height()

  wrapped = [_wrap(t, w) if t else [] for t, w in zip(col_titles or (), widths)]
  title_h = (max(len(w) for w in wrapped) * line + 2 * _PAD) if any(wrapped) else 0
  row_title_h = line + 2 * _PAD if row_titles is not None else 0
  ys, y = [], title_h
  for h in heights:
    ys.append(y + row_title_h)
    y += row_title_h + h + gap
  grid_h = y - gap if rows else title_h
  width, height = grid_w, grid_h
  if right is not None:
    width += gap + right.shape[1]
    height = max(height, title_h + right.shape[0])
  out = np.full((max(height, 1), max(width, 1), 3), background, np.uint8)

  for c, lines in enumerate(wrapped):
    if lines:
      out[:title_h, xs[c]:xs[c] + widths[c]] = _text_block(lines, widths[c], title_h,
                                                           TITLE_COLOUR, background, centre=True)
  for r, row in enumerate(rows):
    if row_titles is not None and row_titles[r]:
      out[ys[r] - row_title_h:ys[r], :grid_w] = _text_block(
          [row_titles[r]], grid_w, row_title_h, ROW_TITLE_COLOUR, background, centre=False)
    for c, p in enumerate(row):
      if p is not None:
        _place(out, p, ys[r], xs[c], heights[r], widths[c])
  if right is not None:
    out[title_h:title_h + right.shape[0], grid_w + gap:] = right
  return out
