"""Lazy re-exports for the package `__init__` files.

A package names its public surface once (name -> the submodule that defines it); each name's module loads on first
use (PEP 562). Importing one light module of a package (the CLI parser, the torch-free ONNX predictor) then does not
load the package's heavy ones (torch, scikit-learn), and `genrefusion --help` stays fast.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, whose public names live in submodules: `exports` maps a name to its
    module, relative to the package (".cache"). A name is looked up once, then kept in the package's namespace."""
    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(exports) | set(vars(sys.modules[package])))

    return __getattr__, __dir__
