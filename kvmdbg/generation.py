"""A change counter shared by writers and the caches that read them (imports nothing).

The CPU's walk memo, the EPT walk memos (EptHardware.memo and .prefixes) and the TDP
MMU's last_tables must notice whenever anything a guest-physical translation depends on
changes: an SPTE (TDP or shadow) or a memslot. Each writer bumps one shared Generation;
a cache compares ``.value`` with the value it last saw, one attribute read instead of a
call per lookup.

These memos hold successful walks (or the first levels of one) only, and such a walk
read present SPTEs only; so an SPTE that was not present becoming present (an EPT
violation or a shadow #PF being fixed, the common case) cannot change a memoised
answer, and its writers do not bump. Any change to a present SPTE, a table removal and
a memslot change do.
"""


class Generation:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0
