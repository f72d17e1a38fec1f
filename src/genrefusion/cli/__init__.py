"""The `genrefusion` command line: every command's parser and handler, and the demo."""
from .commands import build_parser, main

__all__ = ["build_parser", "main"]
