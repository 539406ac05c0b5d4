"""``paper.tex`` from sections and tables, and its compilation with Debian's TeX toolchain.

Prose arrives with its numbers already filled in (:meth:`NumberBook.fill`) and is escaped for LaTeX here; only two
markers become commands: ``[@key]`` (``[@a; @b]``) becomes ``\\citep{...}`` for keys of the shipped bibliography,
and ``[ref:label]`` becomes ``\\ref{label}``. A citation of any other key is an error, so no reference can be made up.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from agent.paper.content import Section, Table
from harness.errors import UserError

CITE = re.compile(r"\[(@[a-z0-9]+(?:;\s*@[a-z0-9]+)*)\]")
REF = re.compile(r"\[ref:([a-z:]+)\]")
_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
INSTALL_HINT = "apt-get install -y latexmk texlive-latex-recommended texlive-fonts-recommended"


def bibliography_text() -> str:
    return resources.files("agent.paper").joinpath("references.bib").read_text(encoding="utf-8")


def bibliography_keys() -> set[str]:
    return set(re.findall(r"@\w+\{([a-z0-9]+),", bibliography_text()))


def escape(text: str) -> str:
    return "".join(_SPECIAL.get(c, c) for c in text)


def citations(text: str) -> list[str]:
    return [k.strip().lstrip("@") for group in CITE.findall(text) for k in group.split(";")]


def render_prose(text: str, keys: set[str]) -> str:
    """Escaped prose with its citation and reference markers turned into LaTeX."""
    unknown = sorted(set(citations(text)) - keys)
    if unknown:
        raise ValueError(f"citations outside the bibliography: {', '.join(unknown)}")
    out = escape(text)
    out = CITE.sub(lambda m: r"\citep{" + ",".join(k.strip().lstrip("@") for k in m.group(1).split(";")) + "}", out)
    return REF.sub(lambda m: r"\ref{" + m.group(1) + "}", out)


def render_table(t: Table, keys: set[str]) -> str:
    spec = "l" * len(t.columns)
    head = " & ".join(escape(c) for c in t.columns) + r" \\"
    body = "\n".join(" & ".join(escape(c) for c in row) + r" \\" for row in t.rows) or (
        r"\multicolumn{" + str(len(t.columns)) + r"}{l}{(none)} \\"
    )
    return (
        "\\begin{table}[ht]\n\\centering\\small\n\\resizebox{\\linewidth}{!}{%\n"
        f"\\begin{{tabular}}{{{spec}}}\n\\toprule\n{head}\n\\midrule\n{body}\n\\bottomrule\n\\end{{tabular}}}}\n"
        f"\\caption{{{render_prose(t.caption, keys)}}}\\label{{{t.label}}}\n\\end{{table}}\n"
    )


def render_document(title: str, sections: list[Section], figures: dict[str, str], keys: set[str]) -> str:
    """The whole ``paper.tex``; ``figures`` maps a figure name to its file name and caption (name -> caption)."""
    parts = [
        "\\documentclass[10pt]{article}\n\\usepackage[margin=2.2cm]{geometry}\n\\usepackage{booktabs,graphicx}\n"
        "\\usepackage[numbers]{natbib}\n\\usepackage[hidelinks]{hyperref}\n",
        f"\\title{{{escape(title)}}}\n\\author{{AutoNAS-CodeLM}}\n\\date{{}}\n\\begin{{document}}\n\\maketitle\n",
    ]
    for s in sections:
        if s.title == "Abstract":
            parts.append(f"\\begin{{abstract}}\n{render_prose(s.prose, keys)}\n\\end{{abstract}}\n")
            continue
        parts.append(f"\\section{{{escape(s.title)}}}\n{render_prose(s.prose, keys)}\n")
        for name in s.figures:
            if name in figures:
                parts.append(
                    "\\begin{figure}[ht]\n\\centering\n"
                    f"\\includegraphics[width=\\linewidth]{{{name}.pdf}}\n"
                    f"\\caption{{{render_prose(figures[name], keys)}}}\\label{{fig:{name}}}\n\\end{{figure}}\n"
                )
        parts.extend(render_table(t, keys) for t in s.tables)
    parts.append("\\bibliographystyle{plainnat}\n\\bibliography{references}\n\\end{document}\n")
    return "".join(parts)


def compile_pdf(folder: Path, timeout_s: float = 180.0) -> Path | None:
    """``paper.pdf`` through latexmk (pdflatex + bibtex); None with the reason raised when the toolchain is absent."""
    latexmk = shutil.which("latexmk")
    if latexmk is None:
        return None
    cmd = [latexmk, "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-quiet", "paper.tex"]
    try:
        done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise UserError(f"latexmk did not finish in {timeout_s:g} s; paper.tex is in {folder}") from None
    pdf = folder / "paper.pdf"
    if done.returncode != 0 or not pdf.is_file():
        log = (folder / "paper.log").read_text(errors="replace") if (folder / "paper.log").is_file() else done.stdout
        first = next((ln for ln in log.splitlines() if ln.startswith("!")), "see paper.log")
        raise UserError(f"LaTeX failed on paper.tex ({first[:200]}); the .tex is in {folder}")
    return pdf
