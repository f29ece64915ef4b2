"""Identity resolution (SPEC §3): the identity graph and stable customer keys, as SQL run in DuckDB."""

from orchestration.identity.graph import GraphReport, build_identity_graph
from orchestration.identity.keys import CustomerKeyError, KeyReport, assign_customer_keys

__all__ = [
    "CustomerKeyError",
    "GraphReport",
    "KeyReport",
    "assign_customer_keys",
    "build_identity_graph",
]
