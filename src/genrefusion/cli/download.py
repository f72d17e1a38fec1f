"""`genrefusion data download`: the parser and handler over data/download (fetch, verify and extract MM-IMDb)."""
from __future__ import annotations

import argparse

from ..data import download as download_module
from ..data.download import DEFAULT_URL, SHA256_ENV, URL_ENV, download_mmimdb
from ..data.loader import load_mmimdb
from ..data.summary import data_summary, format_summary


def cmd_download(args) -> int:
    folder = download_mmimdb(args.dest, args.url, args.sha256, force=args.force,
                             keep_archive=not args.remove_archive, progress=not args.no_progress)
    print(f"MM-IMDb is in {folder}\n")
    print(format_summary(data_summary(load_mmimdb(folder))))
    return 0


def add_data_cli(data_subparsers) -> None:
    """Register `download` in the `genrefusion data` subcommand group."""
    p = data_subparsers.add_parser("download", help="fetch, verify and safely extract the MM-IMDb archive",
                                   description=download_module.__doc__.split("\n\n")[0])
    p.add_argument("--dest", default="data", help="folder that receives mmimdb.tar.gz and mmimdb/ (default: data)")
    p.add_argument("--url", default=None, help=f"archive address (default: ${URL_ENV} or {DEFAULT_URL})")
    p.add_argument("--sha256", default=None, help=f"expected SHA-256 of the archive (default: ${SHA256_ENV}; "
                                                   "the official page publishes none)")
    p.add_argument("--force", action="store_true", help="download and extract again even if DEST/mmimdb exists")
    p.add_argument("--remove-archive", action="store_true", help="delete mmimdb.tar.gz after extraction")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_download)


def add_cli(subparsers) -> None:
    """Plugin hook (cli.PLUGIN_MODULES): adds `download` to the existing `data` group, so the command is
    `genrefusion data download`; a parser without a `data` group gets a top-level `download` instead."""
    data = subparsers.choices.get("data")
    groups = [a for a in (data._actions if data else []) if isinstance(a, argparse._SubParsersAction)]
    add_data_cli(groups[0] if groups else subparsers)
