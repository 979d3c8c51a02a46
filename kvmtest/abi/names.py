"""Value -> name maps for the numbers that appear in failure messages.

The constants themselves are plain module-level names (kvmtest.abi.constants,
kvmtest.abi.capabilities), so readers and type checkers see every one; the name -> value
tables are derived from those names by prefix, never written twice.
"""

from collections.abc import Mapping


class Names(dict):
    """A value -> name map that names unknown values instead of raising.

    `Names("KVM_EXIT_", {"KVM_EXIT_IO": 2})[2]` is "KVM_EXIT_IO"; an unknown 99 reads
    "KVM_EXIT_unknown(99)". `by_name` keeps the name -> value table it was built from.
    """

    def __init__(self, prefix: str, names: Mapping[str, int]):
        super().__init__({v: k for k, v in names.items()})
        self.prefix = prefix
        # Not `values`: that would hide dict.values() of the value -> name map.
        self.by_name = dict(names)

    def name(self, value: int) -> str:
        """The name of `value`, or "<prefix>unknown(<value>)"."""
        return self.get(value, f"{self.prefix}unknown({value})")

    def __getitem__(self, value):
        return self.name(value)


def table(namespace: Mapping[str, object], prefix: str, *, exclude: tuple[str, ...] = ()) -> dict[str, int]:
    """Every integer in `namespace` (a module's globals()) whose name starts with `prefix`, in
    definition order, less the names in `exclude` (constants that share the prefix but belong
    to another table, such as KVM_EXIT_IO_IN among the exit reasons)."""
    return {name: value for name, value in namespace.items()
            if name.startswith(prefix) and name not in exclude
            and isinstance(value, int) and not isinstance(value, bool)}
