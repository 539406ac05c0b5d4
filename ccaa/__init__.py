"""ccaa: the code-changing agent adapters, i.e. the editors that change a run's git workspace.

One interface (:mod:`ccaa.editor`) and three editors behind it: the built-in config writer, Claude Code run
headless (:mod:`ccaa.claude_code`) and the GUI fallback that types into a terminal (:mod:`ccaa.gui`).
"""
