"""Moved to :mod:`sandbox.isolation` (kernel isolation through bubblewrap); kept for one release of imports."""

from sandbox.isolation import ExecLimits, ExecResult, Isolation, SandboxUnavailable, run_program

__all__ = ["ExecLimits", "ExecResult", "Isolation", "SandboxUnavailable", "run_program"]
