"""The fixed measurement: corpus and splits, tokenizers, bits per byte, latency, HumanEval, budgets and the
run-file contract.

Nothing here is ever copied into a run's workspace, and every worker imports it from the installed package:
an editor changes the model code (``nas``), never how that code is measured. This package imports no
research code (``nas``, ``distill``, ``kernels``, ``agent``); a model reaches it only as a ``torch.nn.Module``.
"""
