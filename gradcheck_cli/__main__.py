"""``python -m gradcheck_cli``, and the ``gradcheck`` command's entry point (:func:`run`)."""

import sys


def run() -> None:
    """The command line, Ctrl-C during start-up included: importing the CLI (click, and
    what it pulls in) happens outside :func:`cli.main`'s handler, and an interrupt there
    is one line and exit status 130, not a traceback."""
    try:
        from .cli import main
    except KeyboardInterrupt:
        if sys.stderr is not None:
            try:
                sys.stderr.write("interrupted\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
