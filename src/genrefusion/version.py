"""The release, in one place: the package root re-exports it, and run folders, model cards and the service report
it (they import it from here, not from the package root, which sits above every layer)."""
__version__ = "0.1.0"
