"""The binding fast path: a call whose argument signature was verified before skips the
structural checks, binds the same arguments, and anything that changes the signature is checked
again."""

import numpy as np
import pytest

from attnplan import AttentionDescriptor, InvalidArguments
from attnplan import arguments
from attnplan.arguments import bind_arguments

DESC = AttentionDescriptor(batch=1, seqlen_q=8, seqlen_kv=8, heads_q=2, heads_kv=2, head_dim=16, dtype="f32",
                           return_lse=True)


def _args():
    q = np.zeros((1, 8, 2, 16), np.float32)
    return dict(q=q, k=q.copy(), v=q.copy(), out=np.zeros_like(q), lse=np.zeros((1, 2, 8), np.float32))


def test_second_call_takes_the_fast_path_and_binds_the_same(monkeypatch):
    arguments._VERIFIED.clear()
    args = _args()
    first = bind_arguments(DESC, args)
    calls = []
    monkeypatch.setattr(arguments, "_collect_checked", lambda *a: calls.append(a) or pytest.fail("re-checked"))
    second = bind_arguments(DESC, dict(args, q=args["q"].copy()))
    assert not calls
    for name in ("q", "k", "v", "out", "lse"):
        a, b = getattr(first, name), getattr(second, name)
        assert (a.dtype, a.shape, a.strides, a.origin) == (b.dtype, b.shape, b.strides, b.origin)


@pytest.mark.parametrize("change,culprit", [
    (lambda a: dict(a, q=a["q"].astype(np.float64)), "q"),
    (lambda a: dict(a, k=np.zeros((1, 9, 2, 16), np.float32)), "k"),
    (lambda a: dict(a, v=np.asfortranarray(a["v"])), "v"),
    (lambda a: dict(a, lse=np.zeros((1, 2, 8), np.float64)), "lse"),
])
def test_a_changed_signature_is_checked_again(change, culprit):
    args = _args()
    bind_arguments(DESC, args)
    with pytest.raises(InvalidArguments) as info:
        bind_arguments(DESC, change(args))
    assert info.value.argument == culprit


def test_read_only_output_is_caught_after_a_writable_one():
    args = _args()
    bind_arguments(DESC, args)
    frozen = np.zeros_like(args["out"])
    frozen.flags.writeable = False
    with pytest.raises(InvalidArguments) as info:
        bind_arguments(DESC, dict(args, out=frozen))
    assert info.value.argument == "out"


def test_seed_is_checked_on_every_call():
    desc = DESC.replace(dropout_p=0.1)
    args = _args()
    bind_arguments(desc, dict(args, dropout_seed=1))
    with pytest.raises(InvalidArguments) as info:
        bind_arguments(desc, dict(args, dropout_seed=-1))
    assert info.value.argument == "dropout_seed"
