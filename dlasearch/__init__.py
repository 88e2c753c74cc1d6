"""dlasearch: a graph IR, compiler, model zoo and search for deep layer aggregation."""
__version__ = "0.1.0"  # before the imports: modules loaded below may read it
from dlasearch.ir import IR, IRError
from dlasearch.ir import to_module as compile
from dlasearch.deploy.checkpoint import load

__all__ = ["IR", "IRError", "compile", "load"]
