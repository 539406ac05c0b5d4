"""What may decode a served model, as ``autonas serve --runtime`` names it.

Standard library only: the command line checks the option before it imports torch (``autonas --help`` and every
refused command stay fast), and the engine and the registry read the same names.
"""

from __future__ import annotations

#: auto = each folder's measured fastest runtime that can batch (ONNX int8/fp32), else PyTorch
RUNTIME_CHOICES = ("auto", "torch", "onnx", "onnx-int8")
