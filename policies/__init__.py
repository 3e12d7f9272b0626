"""Policy networks: the chunked-action transformer and baselines (the contract: :mod:`policies.base`)::

    from policies import create_policy
    policy = create_policy("chunk_transformer", feature_dim=768, proprio_dim=10, action_dim=4)

Importing this package registers the built-in policies (``chunk_transformer``, ``mlp``);
``register_policy(name, cls)`` adds one.
"""

from policies.base import (
    CONFIG_NAME,
    LOSSES,
    WEIGHTS_NAME,
    BasePolicy,
    available_policies,
    create_policy,
    load_policy,
    register_policy,
)
from policies.chunk_transformer import ChunkTransformerPolicy
from policies.mlp import MLPPolicy

register_policy("chunk_transformer", ChunkTransformerPolicy)
register_policy("mlp", MLPPolicy)

__all__ = [
    "CONFIG_NAME",
    "LOSSES",
    "WEIGHTS_NAME",
    "BasePolicy",
    "available_policies",
    "create_policy",
    "load_policy",
    "register_policy",
]
