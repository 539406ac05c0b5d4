"""The child side of :mod:`sandbox.isolation`: runs one untrusted program and writes its verdict.

Run as a file by a fresh interpreter, never imported there: ``python -I -S verdict_runner.py TIMEOUT_S
TAG``. ``-I`` keeps the project (and the script's own folder) off the import path and ``-S``
skips ``site``, so it must need nothing but the standard library, and only cheap parts of it (no json,
whose import alone costs ~15 ms). Under bubblewrap the interpreter may be the distribution's, not the
project's, so it must also stay plain Python that any python3 runs. The parent imports this module only
for :data:`MARKER`; nothing runs on import.

Protocol. stdin: a random nonce on one line, then the program's UTF-8 source, then end of file (end of
file with no nonce: the sandbox was not needed, and the runner exits). The runner may be started long
before its program exists (the evaluator starts the next sandboxes while the current program runs), so it
waits on stdin, and the program's time starts only once its source has been read. stdin is then replaced
by ``/dev/null``, so the program cannot read the nonce there. The verdict is the line ``<MARKER><nonce>
<verdict, hex-encoded>`` written to a private copy of stdout only after the program returned; hex, so no
text of the program's can break the line. Any other way out (``os._exit``, a signal, a closed stdout)
leaves no verdict. TAG is unused here: it is in the argv so that a test (or a person) can find leftover
runners with ``ps``.
"""

import os
import signal
import sys

MARKER = "\x1eautonas-verdict:"


class _Timeout(BaseException):
    """Raised by the alarm: a BaseException, so a program's ``except Exception`` cannot swallow it."""


def _alarm(signum, frame):
    raise _Timeout()


def main(argv):
    timeout_s = float(argv[1])
    nonce = sys.stdin.buffer.readline().strip().decode()
    if not nonce:  # the evaluator discarded this sandbox unused: end of file, no program
        os._exit(0)
    data = sys.stdin.buffer.read()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    verdict_fd = os.dup(1)
    os.set_inheritable(verdict_fd, False)
    signal.signal(signal.SIGALRM, _alarm)
    outcome = "passed"
    try:
        code = compile(data.decode("utf-8"), "program.py", "exec")
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        exec(code, {})
        signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        outcome = "timed out"
    except BaseException as e:
        signal.setitimer(signal.ITIMER_REAL, 0)
        outcome = f"failed: {type(e).__name__}: {e}"[:500]
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    line = f"\n{MARKER}{nonce} {outcome.encode('utf-8', 'replace').hex()}\n".encode()
    while line:
        line = line[os.write(verdict_fd, line) :]
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
