"""The graph IR: a networkx DAG of typed operations, the passes over it, and its lowering.

- ``graph``: the ``IR`` class (a ``networkx.DiGraph``) and module naming;
- ``kinds``: one class per node kind (attributes, shape rule, lowering, drawing);
- ``passes``: ``validate``, ``infer_shapes``, ``fingerprint``;
- ``serialize``: ``to_json`` / ``from_json``;
- ``lower``: ``to_module`` (IR -> ``torch.fx.GraphModule``).
"""
from dlasearch.errors import IRError
from dlasearch.ir.graph import IR, module_paths, roles
from dlasearch.ir.kinds import BLOCK_TYPES, KINDS, Attr, Kind
from dlasearch.ir.lower import INITS, to_module
from dlasearch.ir.passes import fingerprint, infer_shapes, symbolic_shapes, validate
from dlasearch.ir.serialize import FORMAT, from_json, to_json

__all__ = ["IR", "IRError", "KINDS", "Kind", "Attr", "BLOCK_TYPES", "roles", "module_paths", "validate",
           "infer_shapes", "symbolic_shapes", "fingerprint", "FORMAT", "to_json", "from_json", "to_module", "INITS"]
