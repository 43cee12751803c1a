"""``python -m kmgan_ext [--json]``: print the configuration for a bug report (km.show_config)."""
from __future__ import annotations

import argparse

from ._show_config import show_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kmgan_ext", description=__doc__.split(":", 1)[1].strip())
    p.add_argument("--json", action="store_true", help="print it as JSON")
    args = p.parse_args(argv)
    show_config(as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
