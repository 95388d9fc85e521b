"""One self-contained HTML page from sections of text, tables and PNG files.

Every image is embedded as a ``data:image/png;base64`` URI and the style sheet is
inline, so the single file opens from disk in any browser, with no other file beside
it and no network. ``inspect report`` builds a run's page with it.
"""
import base64
import html
from dataclasses import dataclass, field

from .visualize import PNG_SIGNATURE

STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; }
table { border-collapse: collapse; font-size: .9em; margin: .5em 0; }
td, th { border: 1px solid #ddd; padding: .2em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.missing { color: #8a5a00; }
"""


@dataclass
class Section:
    """A part of the page: ``id`` is its anchor, ``images`` are ``(png path, caption)``,
    ``table`` is ``(header, rows)``; ``missing`` says why a section has nothing to show."""
    id: str
    title: str
    text: list = field(default_factory=list)
    table: tuple = None
    images: list = field(default_factory=list)
    missing: str = None


def png_data_uri(path):
    """The PNG file at ``path`` as a data URI; ValueError naming the file if it is not a PNG."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path}: not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _cells(tag, row):
    return "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in row)


def _table(header, rows):
    return ("<table><tr>" + _cells("th", header) + "</tr>"
            + "".join("<tr>" + _cells("td", row) + "</tr>" for row in rows) + "</table>")


def _section(section):
    out = [f'<section id="{html.escape(section.id)}">', f"<h2>{html.escape(section.title)}</h2>"]
    if section.missing:
        out.append(f'<p class="missing">{html.escape(section.missing)}</p>')
    out += [f"<p>{html.escape(line)}</p>" for line in section.text]
    if section.table:
        out.append(_table(*section.table))
    for path, caption in section.images:
        out.append(f'<figure><img src="{png_data_uri(path)}" alt="{html.escape(caption)}">'
                   f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return "\n".join(out + ["</section>"])


def render(title, intro, sections):
    """The whole page: ``title``, the ``intro`` lines, a table of contents, the sections."""
    contents = "".join(f'<li><a href="#{html.escape(s.id)}">{html.escape(s.title)}</a>'
                       + (" (missing)" if s.missing else "") + "</li>" for s in sections)
    return "\n".join(
        ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
         f"<h1>{html.escape(title)}</h1>"]
        + [f"<p>{html.escape(line)}</p>" for line in intro]
        + [f"<nav><ul>{contents}</ul></nav>"]
        + [_section(s) for s in sections]
        + ["</body></html>", ""])
