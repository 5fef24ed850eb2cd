"""Hypothesis strategies shared by the fuzzers."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def json_values(*, text: int, width: int, leaves: int) -> st.SearchStrategy[Any]:
    """Any JSON value: strings up to *text* characters, arrays and objects up to *width* items,
    at most *leaves* scalars in all; integers within what JavaScript represents exactly."""
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**53), 2**53)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=text),
        lambda children: (
            st.lists(children, max_size=width)
            | st.dictionaries(st.text(max_size=2 * width), children, max_size=width)
        ),
        max_leaves=leaves,
    )
