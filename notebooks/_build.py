"""Write the teaching notebooks (outputs empty) from the cell sources in `_cells/`.

Each file `_cells/NAME.py` holds the cells of `NAME.ipynb`, separated by lines `# %%`
(code) or `# %% [markdown]` (markdown, each line starting with '# '). Run
`python notebooks/_build.py` after editing a cell file; the tests execute the .ipynb files.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def parse_cells(text: str) -> list:
    """Split a percent-format script into notebook cells."""
    cells, kind, lines = [], None, []

    def flush():
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            body = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(body))
        elif kind == "code" and body:
            cells.append(nbformat.v4.new_code_cell(body))

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        elif kind is not None:
            lines.append(line)
    flush()
    return cells


def build(source: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = parse_cells(source.read_text(encoding="utf-8"))
    nb.metadata = {"kernelspec": KERNEL, "language_info": {"name": "python"}}
    for i, cell in enumerate(nb.cells):
        cell.id = f"{source.stem[:2]}-{i:03d}"   # stable ids: rebuilding gives the same file
    nbformat.validate(nb)
    target = HERE / f"{source.stem}.ipynb"
    nbformat.write(nb, target)
    return target


def main() -> None:
    for source in sorted((HERE / "_cells").glob("*.py")):
        print(build(source).name)


if __name__ == "__main__":
    main()
