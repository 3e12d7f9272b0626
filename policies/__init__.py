"""Policy networks: the chunked-action transformer and baselines (the contract: :mod:`policies.base`)::

    from policies import create_policy
    policy = create_policy("chunk_transformer", feature_dim=768, proprio_dim=10, action_dim=4)

Importing this package registers the built-in policies (``chunk_transformer``, ``mlp``).
"""

from policies import chunk_transformer as _chunk_transformer  # noqa: F401 - registers it
from policies import mlp as _mlp  # noqa: F401 - registers it
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
