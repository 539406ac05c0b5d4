"""The default CPU thread count for decoding (``autonas latency``, ``autonas compress``, the ONNX sessions).

One thread, measured rather than assumed: ``benchmarks/thread_choice.py`` on this project's shared 2-core
machine (fresh processes, alternated, 2 rounds, the ~10M model's ONNX int8 decode step) gave 0.34 ms/token at
1 thread against 0.60 at 2 with no competitor of ours (other jobs kept the load average near 12), and 0.57
against 0.64 beside a second training process. A batch-1 step is a chain of small matrix-vector products: a
second thread adds a synchronisation per operator and waits for a core the other jobs hold. Every command
that decodes takes ``--threads`` to override it (``autonas latency --threads 1,2`` compares).

Standard library only: the command line imports it before torch.
"""

DECODE_THREADS = 1
