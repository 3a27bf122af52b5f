"""The relay's pure rules: who forwards to whom, how files become chunks, which lane carries which.

``relay_tree`` is the one home of the shape: the head always sends one copy (to the first worker);
up to ``CHAIN_MAX`` workers form a chain (every node forwards to one: each link carries the data once,
so the time is one copy plus a few chunk-times of pipeline fill); more workers form a tree of
``FANOUT`` below the first worker, which bounds the depth (7 workers: 3 hops instead of 7), and so the
pipeline fill and how many nodes one failure leaves without data. A branching node sends twice; on
Sparks each worker's port is as fast as the head's, so the chain is preferred while its depth is small.
"""

from __future__ import annotations

from collections.abc import Sequence

CHAIN_MAX = 4
FANOUT = 2
CHUNK = 16 << 20  # resume and journal granularity; lanes alternate chunks


def relay_tree(names: Sequence[str], *, chain_max: int = CHAIN_MAX, fanout: int = FANOUT) -> dict[str, list[str]]:
    """Children of every node ("" is the head): a chain for up to ``chain_max`` workers, else the head
    feeds the first worker and the rest hang below it breadth-first, ``fanout`` children each."""
    tree: dict[str, list[str]] = {"": [], **{n: [] for n in names}}
    if not names:
        return tree
    tree[""].append(names[0])
    if len(names) <= chain_max:
        for parent, child in zip(names, names[1:], strict=False):
            tree[parent].append(child)
        return tree
    for i, child in enumerate(names[1:]):
        tree[names[i // fanout]].append(child)
    return tree


def height(tree: dict[str, list[str]], node: str) -> int:
    """Nodes on the longest path from ``node`` down to a leaf, itself included (a leaf: 1)."""
    return 1 + max((height(tree, c) for c in tree[node]), default=0)


def depth(tree: dict[str, list[str]]) -> int:
    """Hops from the head to the farthest worker."""
    return height(tree, "") - 1


def chunks(sizes: Sequence[int], chunk: int = CHUNK) -> list[tuple[int, int, int]]:
    """(file index, offset, length) for every chunk of every file, in file order (empty files: none)."""
    return [(fi, off, min(chunk, size - off)) for fi, size in enumerate(sizes) for off in range(0, size, chunk)]


def lanes(items: Sequence[tuple[int, int, int]], count: int) -> list[list[tuple[int, int, int]]]:
    """Alternate chunks over ``count`` lanes (one per fabric twin), so both stay busy to the end."""
    return [list(items[k::count]) for k in range(count)]


def still_needed(items: Sequence[tuple[int, int, int]], paths: Sequence[str],
                 held: Sequence[dict[str, object]]) -> list[tuple[int, int, int]]:
    """The chunks at least one target lacks (``held`` per target: path -> "all" or journaled offsets)."""
    def has(h: dict[str, object], fi: int, off: int) -> bool:
        got = h.get(paths[fi], [])
        return got == "all" or off in got  # type: ignore[operator]
    return [c for c in items if not all(has(h, c[0], c[1]) for h in held)]
