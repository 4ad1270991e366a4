"""``premd completion bash|zsh``: the shell completion script, generated from the parser (shtab).

Install: ``premd completion bash > /etc/bash_completion.d/premd`` or ``premd completion zsh > "${fpath[1]}/_premd"``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

SHELLS = ("bash", "zsh")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "completion", help="print the shell completion script (bash or zsh)", description=__doc__
    )
    parser.add_argument("shell", choices=SHELLS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import shtab

    from premd.cli import build_parser

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return 0
