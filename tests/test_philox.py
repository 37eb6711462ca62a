"""Philox4x32-10 against the Random123 known-answer vectors, and the dropout keep mask."""

import numpy as np
import pytest

from attnplan.philox import dropout_keep_mask, dropout_threshold, philox4x32

import brute_force

# (counter, key, expected) from Random123's kat_vectors for philox4x32-10.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_known_answer_scalar(counter, key, expected):
    words = philox4x32(counter, key)
    assert tuple(int(w) for w in words) == expected
    assert all(np.asarray(w).dtype == np.uint32 for w in words)


def test_known_answers_broadcast_over_arrays():
    """The same vectors computed as one array call (the counter words vectorised)."""
    for counter, key, expected in KNOWN_ANSWERS:
        columns = [np.full(3, c, dtype=np.uint32) for c in counter]
        words = philox4x32(columns, key)
        for word, want in zip(words, expected):
            assert word.shape == (3,)
            assert (word == want).all()


def test_counter_words_are_not_interchangeable():
    """Each counter word changes the output (catches a dropped or swapped counter word)."""
    base = tuple(int(w) for w in philox4x32((1, 2, 3, 4), (5, 6)))
    for position in range(4):
        counter = [1, 2, 3, 4]
        counter[position] += 1
        assert tuple(int(w) for w in philox4x32(tuple(counter), (5, 6))) != base
    assert tuple(int(w) for w in philox4x32((2, 1, 3, 4), (5, 6))) != base
    assert tuple(int(w) for w in philox4x32((1, 2, 3, 4), (6, 5))) != base


@pytest.mark.parametrize("dropout_p, expected", [(0.0, 0), (0.5, 2**31), (0.25, 2**30),
                                                 (0.1, int(np.floor(0.1 * 2.0**32))),
                                                 (np.nextafter(1.0, 0.0), 2**32 - 1)])
def test_dropout_threshold(dropout_p, expected):
    assert dropout_threshold(dropout_p) == expected


@pytest.mark.parametrize("dropout_p", [0.1, 0.5, 0.9])
def test_keep_rate_is_one_minus_p(dropout_p):
    heads, rows, cols = 4, 64, 256                  # 65536 elements: 3 sigma < 0.006
    mask = dropout_keep_mask(1234, 3, np.arange(heads)[:, None, None], np.arange(rows)[None, :, None],
                             np.arange(cols)[None, None, :], dropout_p)
    assert mask.shape == (heads, rows, cols) and mask.dtype == bool
    sigma = np.sqrt(dropout_p * (1 - dropout_p) / mask.size)
    assert abs(mask.mean() - (1 - dropout_p)) < 5 * sigma


def test_keep_mask_matches_per_element_definition():
    """dropout_keep_mask (vectorised) == one Philox call per element, with a 64-bit seed."""
    seed, dropout_p, batch_index = 0x0123456789ABCDEF, 0.3, 1
    heads, rows, cols = 2, 3, 11                    # cols not a multiple of 4: partial last word
    mask = dropout_keep_mask(seed, batch_index, np.arange(heads)[:, None, None],
                             np.arange(rows)[None, :, None], np.arange(cols)[None, None, :], dropout_p)
    expected = brute_force.keep_mask(seed, batch_index, heads, rows, cols, dropout_p)
    np.testing.assert_array_equal(mask, expected)
    assert 0 < mask.sum() < mask.size


def test_keep_mask_depends_on_seed_and_batch():
    args = (np.arange(2)[:, None, None], np.arange(8)[None, :, None], np.arange(8)[None, None, :], 0.5)
    base = dropout_keep_mask(7, 0, *args)
    assert not np.array_equal(base, dropout_keep_mask(8, 0, *args))
    assert not np.array_equal(base, dropout_keep_mask(7 + 2**32, 0, *args))    # the high key word
    assert not np.array_equal(base, dropout_keep_mask(7, 1, *args))
    np.testing.assert_array_equal(base, dropout_keep_mask(7, 0, *args))
