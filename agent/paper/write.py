"""``autonas paper RUN``: a research paper (LaTeX and PDF) from a run folder, every number traceable to its files.

The folder is written next to its final place and moved there when complete, so an interrupted or failed write
leaves the previous paper (or nothing), and nothing else in the run is touched.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from agent.llm import LLMClient
from agent.paper.content import Section, number_book, sections
from agent.paper.facts import read_run
from agent.paper.figures import pareto_figure
from agent.paper.latex import INSTALL_HINT, bibliography_keys, bibliography_text, compile_pdf, render_document
from agent.paper.prose import draft_section

FIGURE_CAPTIONS = {
    "pareto": "Validation bits per byte against INT8 size and batch-1 decode latency for every trained model; "
    "the red line is the Pareto front."
}


@dataclass
class PaperResult:
    folder: Path
    pdf: Path | None
    notes: list[str] = field(default_factory=list)
    finished_run: bool = True


def write_paper(run_dir: Path, out: Path, client: LLMClient | None = None) -> PaperResult:
    facts = read_run(run_dir)
    book = number_book(facts)
    keys = bibliography_keys()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".paper-", dir=out.parent))
    try:
        figures = {}
        if pareto_figure(facts, tmp / "pareto.pdf"):
            figures["pareto"] = FIGURE_CAPTIONS["pareto"]
        notes: list[str] = []
        final: list[Section] = []
        for s in sections(facts, book):
            draft = draft_section(client, s.title, s.prose, book, keys)
            if draft.note:
                notes.append(draft.note)
            final.append(Section(s.title, book.fill(draft.text), s.tables, s.figures))
        title = f"Searching for a small code language model: {facts.goal}"
        (tmp / "paper.tex").write_text(render_document(title, final, figures, keys), encoding="utf-8")
        (tmp / "references.bib").write_text(bibliography_text(), encoding="utf-8")
        (tmp / "numbers.tsv").write_text(
            "placeholder\tvalue\n" + "".join(f"{k}\t{v}\n" for k, v in sorted(book.text.items())), encoding="utf-8"
        )
        pdf = compile_pdf(tmp)
        if pdf is None:
            notes.append(f"no TeX toolchain: wrote paper.tex only; install it with: {INSTALL_HINT}")
        (tmp / "paper_log.txt").write_text("\n".join(notes) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PaperResult(out, out / "paper.pdf" if pdf is not None else None, notes, facts.finished)
