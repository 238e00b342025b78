"""The release: one place for it, which any module may import (the package's root
names every public module, so a module importing the root would, to a reader of
imports, depend on all of them)."""

__version__ = "0.1.0"
