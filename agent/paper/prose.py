"""Prose from an LLM, under the rule that it writes words and never numbers.

The model gets one section's offline draft, the placeholders it may use (with their values, so it knows what they
say) and the citation keys it may use; it returns the section rewritten. The draft is refused, and the offline
text kept, when it writes a digit string that is not one of the run's numbers, names an unknown placeholder or
cites outside the bibliography. Every refusal is reported, so the log says which sections an LLM wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.llm import LLMClient, LLMError
from agent.paper.latex import citations
from agent.paper.numbers import PLACEHOLDER, NumberBook, invented_numbers

SYSTEM = (
    "You edit one section of a short research paper about an automated search for small code language models. "
    "Rewrite the draft as clear, plain academic prose. Rules: never write a digit yourself; every number must be a "
    "placeholder from the list, written exactly as {{name}}; keep citations only in the form [@key] with the given "
    "keys, and keep markers like [ref:tab:kept] as they are; do not add claims the draft does not make."
)
TOOL = "section_text"
SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string", "description": "the rewritten section"}},
    "required": ["text"],
}


@dataclass(frozen=True)
class Draft:
    text: str
    by_llm: bool
    note: str = ""


def check_draft(text: str, book: NumberBook, keys: set[str]) -> str:
    """Why ``text`` cannot go into the paper (empty when it can)."""
    invented = invented_numbers(text, book)
    if invented:
        return "numbers not in the run: " + ", ".join(sorted(set(invented))[:5])
    unknown = sorted({k for k in PLACEHOLDER.findall(text) if not book.has(k)})
    if unknown:
        return "unknown placeholders: " + ", ".join(unknown[:5])
    foreign = sorted(set(citations(text)) - keys)
    if foreign:
        return "citations outside the bibliography: " + ", ".join(foreign[:5])
    return ""


def draft_section(client: LLMClient | None, title: str, offline: str, book: NumberBook, keys: set[str]) -> Draft:
    """The LLM's version of ``offline`` when it passes :func:`check_draft`; the offline text otherwise."""
    if client is None:
        return Draft(offline, False)
    used = sorted(set(PLACEHOLDER.findall(offline)))
    listing = "\n".join(f"{{{{{k}}}}} = {book.text[k]}" for k in used if book.has(k))
    user = (
        f"Section: {title}\n\nPlaceholders you may use:\n{listing or '(none)'}\n\n"
        f"Citation keys: {', '.join(sorted(keys))}\n\nDraft:\n{offline}"
    )
    try:
        reply = client.call_tool(SYSTEM, user, TOOL, "Return the rewritten section.", SCHEMA)
    except LLMError as err:
        return Draft(offline, False, f"{title}: LLM unavailable ({err}); offline text kept")
    text = (reply.data or {}).get("text") if isinstance(reply.data, dict) else None
    if not isinstance(text, str) or not text.strip():
        return Draft(offline, False, f"{title}: the LLM returned no text; offline text kept")
    why = check_draft(text, book, keys)
    if why:
        return Draft(offline, False, f"{title}: LLM draft refused ({why}); offline text kept")
    return Draft(text.strip(), True, f"{title}: written by the LLM")
