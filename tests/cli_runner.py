"""The ``transferset`` command in this process: the installed script's own entry point
(``pipeline.cli:main``, what ``[project.scripts]`` names) called with ``sys.argv`` set, inside
typer's ``CliRunner`` isolation (stdin, stdout and stderr captured; the environment restored).

It answers what the installed command would: the exit code ``main`` leaves in ``SystemExit`` (2
for bad input, 1 for ``verify``'s problems), stdout and stderr. An exception that escapes ``main``
becomes exit 1 with its traceback on stderr, as Python prints it, so a "no traceback" assertion
fails exactly as it would for the subprocess. Bad-input cases pay no interpreter start and no
torch import this way (about 4 s each through the script); ``tests/test_bad_input.py`` still
runs a dozen cases through the installed script as a subprocess.

``main`` shuts Ray down when it ends (as the script does at exit); a Ray that other tests started
in this process goes with it, and the next test that needs one starts it again (``ensure_ray``).
What a command changes in the process that a later test could feel is put back afterwards: the
working directory, ``sys.argv``, the environment and torch's thread count (a student run sets it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

from typer.testing import CliRunner


def transferset_in_process(*args: Any, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``transferset ARGS`` run by ``pipeline.cli.main`` in this process, in directory ``cwd``."""
    from pipeline.cli import main

    argv = ["transferset", *map(str, args)]
    runner = CliRunner()
    saved_argv, saved_cwd, saved_env = sys.argv, os.getcwd(), dict(os.environ)
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    code: int = 0
    with runner.isolation(env={"RAY_AUTH_MODE": "disabled"}) as (out, err, _):
        sys.argv = argv
        os.chdir(cwd)
        try:
            main()
        except SystemExit as done:
            code = exit_code(done.code)
        except BaseException:  # noqa: BLE001 - what the interpreter would print and exit 1 for
            traceback.print_exc(file=sys.stderr)
            code = 1
        finally:
            sys.argv = saved_argv
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
            if threads is not None:
                sys.modules["torch"].set_num_threads(threads)
            sys.stdout.flush()
            sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace")
    return subprocess.CompletedProcess(argv, code, stdout, stderr)


def exit_code(code: object) -> int:
    """What the interpreter makes of ``SystemExit(code)``: None is 0, an int itself, anything
    else is printed to stderr and exits 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
