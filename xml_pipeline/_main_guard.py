"""The main-module guard that child processes started by "forkserver" or "spawn" rely on.

Such a child imports the parent's main script again (as ``__mp_main__``) before it runs
anything, so that functions defined there can be found. A script that starts a process pool or
a state server at import time, outside ``if __name__ == "__main__":``, would start one again in
every child, which multiprocessing refuses with a traceback per child; the parent then sees
only children dying. Two checks turn that into one clear error in the parent:

- in the child, `leave_if_importing_main` ends the process at once, silently, with
  `MAIN_REIMPORTED` as its exit status, when it is asked to start a pool or a server while it
  is still importing the parent's main script;
- in the parent, `guard_error` turns that exit status into the error to raise, and
  `unimportable_main` catches the main program a child cannot import at all (code read from
  standard input), before any child starts.
"""

from __future__ import annotations

import os
import sys
from multiprocessing import process

from xml_pipeline._errors import UsageError

__all__ = ["MAIN_REIMPORTED", "guard_error", "leave_if_importing_main", "unimportable_main"]

# EX_CONFIG from sysexits.h: "something was found in an unconfigured or misconfigured state"
MAIN_REIMPORTED = 78


def leave_if_importing_main() -> None:
    """In a child still importing the parent's main script: exit with `MAIN_REIMPORTED`.

    ``os._exit`` on purpose: nothing of the script's own (buffered output, atexit hooks, half
    started resources) should run or print in a process that exists only because of it.
    """
    # multiprocessing sets this flag while a child imports the parent's main module (and
    # checks it itself before starting a process, with a generic RuntimeError)
    if getattr(process.current_process(), "_inheriting", False):
        os._exit(MAIN_REIMPORTED)


def _main_script() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name is not None:
        return f"module {name}"
    return str(getattr(main, "__file__", None) or "the main script")


def guard_error(what: str, exitcode: int | None) -> UsageError | None:
    """The error to raise when a child that ``what`` started exited with ``exitcode``.

    Returns:
        the error naming the main script and the guard, or ``None`` when ``exitcode`` is not
        `MAIN_REIMPORTED` (the child died of something else).
    """
    if exitcode != MAIN_REIMPORTED:
        return None
    script = _main_script()
    return UsageError(
        f"{what} could not start: its child processes import the main program ({script}) "
        "again, and the main program starts an organism, a process pool or a state server as "
        "soon as it is imported. Move the code that starts it under "
        '`if __name__ == "__main__":` at the end of the script (see "Safe importing of main '
        'module" in the multiprocessing documentation)'
    )


def unimportable_main(what: str) -> UsageError | None:
    """The error to raise when children could not import the main program at all.

    ``python - < script.py`` names its main module ``<stdin>``: a child started by "spawn" or
    "forkserver" looks for a file of that name and dies.

    Returns:
        the error, or ``None`` when children can import the main program (or need not).
    """
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) is not None:
        return None  # ``python -m module``: imported by name
    path = getattr(main, "__file__", None)
    if not isinstance(path, str):
        return None  # interactive, ``python -c``: children leave the main module alone
    base = getattr(process, "ORIGINAL_DIR", None) or os.getcwd()  # where the script started
    if os.path.isfile(os.path.join(base, path)):
        return None
    return UsageError(
        f"{what} could not start: the main program was read from {path!r} (standard input?), "
        "and its child processes must import the main program again, from a file. Save the "
        "program to a file, put the code that starts the organism under "
        '`if __name__ == "__main__":`, and run `python that_file.py`'
    )
