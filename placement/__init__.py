"""Pure placement decisions shared by the sidecar (mesh/) and the simulator (sim/).

No I/O, no asyncio, no clocks: time comes in as ``now_ms``.  See the module
docstrings for why each policy is shaped the way it is.
"""

from placement.copies import CopyAction, CopyDecision, CopyPolicy, decide_copy, may_act
from placement.failures import backoff_delay_ms, in_backoff
from placement.instances import InstanceState, choose_load_target, pick_copy
from placement.lru import Admission, CacheEntry, EvictionPlan, SizeAwareLRU

__all__ = [
    "Admission",
    "CacheEntry",
    "CopyAction",
    "CopyDecision",
    "CopyPolicy",
    "EvictionPlan",
    "InstanceState",
    "SizeAwareLRU",
    "backoff_delay_ms",
    "choose_load_target",
    "decide_copy",
    "in_backoff",
    "may_act",
    "pick_copy",
]
