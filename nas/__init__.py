"""The research code: the editable model (``space``, ``model``, ``train``) and the fixed search around it.

With ``AUTONAS_MODEL_CODE`` set (a run's workspace, or the ``code/`` folder a trained model carries), that folder's
``nas/`` goes in front of this package's own: its model modules replace the installed ones, nothing else can
(:mod:`harness.model_code` refuses a folder that would replace a fixed module).
"""

import os as _os

if _os.environ.get("AUTONAS_MODEL_CODE"):
    import harness as _harness
    from harness.errors import UserError as _UserError
    from harness.model_code import model_code_root as _root
    from harness.model_code import package_path_for as _package_path

    _code_root = _root()
    assert _code_root is not None  # AUTONAS_MODEL_CODE is set: the condition above
    try:
        # measured by the model's own code: the harness must come from the installation, not from the folder
        if _os.path.realpath(_harness.__file__).startswith(_os.path.realpath(_code_root) + _os.sep):
            raise _UserError(
                f"harness was imported from {_harness.__file__}, inside the model code folder: run with "
                "PYTHONSAFEPATH=1 (python -P) from another folder"
            )
        __path__.insert(0, _package_path(_code_root))
    except _UserError as _err:  # a bad folder is the user's (or an editor's) to fix: one line, exit 2
        import sys as _sys

        print(f"error: {_err}", file=_sys.stderr)
        raise SystemExit(2) from None
