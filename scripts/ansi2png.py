#!/usr/bin/env python3
"""Renders a terminal capture with ANSI colours (tmux capture-pane -e -p) to a PNG.

usage: ansi2png.py CAPTURE.ansi OUT.png
Needs Pillow (pip install pillow) and the DejaVu Sans Mono font (Debian: fonts-dejavu-core).
"""
import re
import sys

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"
SIZE = 16
BG = (24, 24, 28)
FG = (220, 220, 220)
BASE = [
    (0, 0, 0), (205, 49, 49), (13, 188, 121), (229, 229, 16),
    (36, 114, 200), (188, 63, 188), (17, 168, 205), (229, 229, 229),
    (102, 102, 102), (241, 76, 76), (35, 209, 139), (245, 245, 67),
    (59, 142, 234), (214, 112, 214), (41, 184, 219), (255, 255, 255),
]


def color256(n):
    if n < 16:
        return BASE[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return (steps[n // 36], steps[n // 6 % 6], steps[n % 6])
    v = 8 + (n - 232) * 10
    return (v, v, v)


def parse(text):
    """Yields rows of cells (char, fg, bg, bold)."""
    rows = []
    fg, bg, bold, rev = None, None, False, False
    for line in text.split("\n"):
        cells = []
        i = 0
        while i < len(line):
            m = re.match(r"\x1b\[([0-9;]*)m", line[i:])
            if m:
                codes = [int(c) if c else 0 for c in m.group(1).split(";")] or [0]
                k = 0
                while k < len(codes):
                    c = codes[k]
                    if c == 0:
                        fg, bg, bold, rev = None, None, False, False
                    elif c == 1:
                        bold = True
                    elif c == 22:
                        bold = False
                    elif c == 7:
                        rev = True
                    elif c == 27:
                        rev = False
                    elif 30 <= c <= 37:
                        fg = BASE[c - 30]
                    elif 90 <= c <= 97:
                        fg = BASE[c - 90 + 8]
                    elif 40 <= c <= 47:
                        bg = BASE[c - 40]
                    elif 100 <= c <= 107:
                        bg = BASE[c - 100 + 8]
                    elif c == 39:
                        fg = None
                    elif c == 49:
                        bg = None
                    elif c in (38, 48) and k + 2 < len(codes) and codes[k + 1] == 5:
                        col = color256(codes[k + 2])
                        if c == 38:
                            fg = col
                        else:
                            bg = col
                        k += 2
                    elif c in (38, 48) and k + 4 < len(codes) and codes[k + 1] == 2:
                        col = tuple(codes[k + 2:k + 5])
                        if c == 38:
                            fg = col
                        else:
                            bg = col
                        k += 4
                    k += 1
                i += m.end()
                continue
            m = re.match(r"\x1b\[[0-9;?]*[A-Za-z]", line[i:])
            if m:
                i += m.end()
                continue
            f, b = fg or FG, bg or BG
            if rev:
                f, b = b, f
            cells.append((line[i], f, b, bold))
            i += 1
        rows.append(cells)
    while rows and not rows[-1]:
        rows.pop()
    return rows


def main():
    src, out = sys.argv[1], sys.argv[2]
    rows = parse(open(src, encoding="utf-8").read())
    font = ImageFont.truetype(FONT, SIZE)
    bold = ImageFont.truetype(BOLD, SIZE)
    cw = int(round(font.getlength("M")))
    ch = SIZE + 4
    width = max((len(r) for r in rows), default=1)
    img = Image.new("RGB", (width * cw + 16, len(rows) * ch + 16), BG)
    d = ImageDraw.Draw(img)
    for y, row in enumerate(rows):
        for x, (c, f, b, bo) in enumerate(row):
            px, py = 8 + x * cw, 8 + y * ch
            if b != BG:
                d.rectangle([px, py, px + cw - 1, py + ch - 1], fill=b)
            if c == "█":
                d.rectangle([px, py, px + cw - 1, py + ch - 1], fill=f)
            elif c in "─━":
                w = 1 if c == "─" else 3
                d.rectangle([px, py + ch // 2 - w // 2, px + cw - 1, py + ch // 2 + w // 2], fill=f)
            elif c in "│┃":
                w = 1 if c == "│" else 3
                d.rectangle([px + cw // 2 - w // 2, py, px + cw // 2 + w // 2, py + ch - 1], fill=f)
            elif c != " ":
                d.text((px, py + 1), c, font=bold if bo else font, fill=f)
    img.save(out)


if __name__ == "__main__":
    main()
