"""What every hostile-input test asserts (issue #13): exit code 2, one line naming the file or option, no
traceback; and the address-space limit the subprocess tests run under."""

from __future__ import annotations

import resource


def one_line_exit_2(result, *needles: str) -> str:
    """``result`` is a ``CliRunner`` result or a ``CompletedProcess``; returns the error line."""
    code = getattr(result, "exit_code", getattr(result, "returncode", None))
    stdout = getattr(result, "stdout", "") or ""
    stderr = result.stderr or ""
    assert code == 2, stdout[-2000:] + stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stdout + stderr, stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def address_space_limit(nbytes: int):
    """A ``preexec_fn`` capping the child's address space at ``nbytes`` (RLIMIT_AS)."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))

    return apply
