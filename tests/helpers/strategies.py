"""Hypothesis strategies shared by the property tests of what reads untrusted files."""

from __future__ import annotations

from hypothesis import strategies as st


def json_values(max_leaves: int = 10, text_size: int = 8) -> st.SearchStrategy:
    """Any value a JSON file could hold: ``null``, booleans, integers of any size, floats
    (``NaN`` and infinities included, as Python's ``json`` writes them), short strings, and
    lists and objects of these, nested."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=text_size)
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )
