"""Shared helpers of the command-line tests: run ``xmodal`` in-process, check a one-line user error."""

from __future__ import annotations

from xmodal import cli


def run(capsys, *argv):
    """``xmodal argv...`` in-process: (exit status, stdout, stderr). argparse's own errors (a bad
    option value) exit with status 2; that status is returned like the others."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def assert_user_error(code, err, *needles):
    """Exit status 2 and exactly one ``...: error: ...`` line, no traceback, holding every needle."""
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip() and ": error: " in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
