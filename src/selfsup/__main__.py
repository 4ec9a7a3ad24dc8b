"""The `selfsup` command (also `python -m selfsup`): `selfsup embed ...` embeds a folder
of images (`selfsup.commands`); anything else runs the Kedro project, as `kedro run` does."""

import sys
from pathlib import Path
from typing import Any

from selfsup.commands import embed_command


def main(*args, **kwargs) -> Any:
    if sys.argv[1:2] == ["embed"] and not args:
        sys.exit(embed_command(sys.argv[2:]))
    # Imported here: importing Kedro's project module configures Kedro's logging, which
    # would print its set-up lines before `selfsup embed`'s own output.
    from kedro.framework.cli.utils import find_run_command  # noqa: PLC0415
    from kedro.framework.project import configure_project  # noqa: PLC0415

    package_name = Path(__file__).parent.name
    configure_project(package_name)

    interactive = hasattr(sys, "ps1")
    kwargs["standalone_mode"] = not interactive

    run = find_run_command(package_name)
    return run(*args, **kwargs)


if __name__ == "__main__":
    main()
