"""``python -m ovcamo <command> [overrides]``: the console commands, also where no script is on the
PATH (``torchrun -m ovcamo train …`` starts one process per GPU)."""

from __future__ import annotations

import sys

from ovcamo.cli import COMMANDS


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        lines = [f"  {name:<11} {c.summary}" for name, c in COMMANDS.items()]
        asked = argv[:1] in (["-h"], ["--help"])
        print(
            "usage: python -m ovcamo <command> [key=value ...]\n" + "\n".join(lines),
            file=sys.stdout if asked else sys.stderr,
        )
        raise SystemExit(0 if asked else 2)
    COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
