"""Interop (NumPy, ml_dtypes, CPU DLPack producers) and the command line."""

import json

import ml_dtypes
import numpy as np
import pytest

import attnplan
from attnplan.cli import main


class DLPackOnly:
    """A foreign array that only speaks DLPack (like a JAX or TF CPU array)."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, *args, **kwargs):
        return self._array.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


def _qkv(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 7, 2, 8)).astype(dtype) for _ in range(3)]


def test_numpy_in_numpy_out_in_every_float_dtype():
    q, k, v = _qkv(np.float64)
    exact = attnplan.attention(q, k, v)
    for dtype, tol in ((np.float32, 1e-6), (np.float16, 2e-3), (ml_dtypes.bfloat16, 1.6e-2)):
        out = attnplan.attention(*(x.astype(dtype) for x in (q, k, v)))
        assert isinstance(out, np.ndarray) and out.dtype == np.dtype(dtype)
        np.testing.assert_allclose(out.astype(np.float64), exact, atol=tol * 4, rtol=tol * 4)


def test_fp8_inputs_give_bf16_output():
    q, k, v = (x.astype(ml_dtypes.float8_e4m3fn) for x in _qkv())
    out = attnplan.attention(q, k, v)
    assert out.dtype == np.dtype(ml_dtypes.bfloat16)


def test_cpu_dlpack_producer_is_accepted():
    q, k, v = _qkv()
    want = attnplan.attention(q, k, v, causal=True)
    try:
        got = attnplan.attention(DLPackOnly(q), DLPackOnly(k), DLPackOnly(v), causal=True)
    except attnplan.InvalidArguments as exc:   # without CuPy, a host DLPack array must still work
        pytest.fail(f"CPU DLPack array rejected: {exc}")
    np.testing.assert_array_equal(np.asarray(got), want)


def test_stream_argument_is_validated():
    from attnplan.streams import stream_handle
    assert stream_handle(1234) == 1234
    for bad in (True, "default", 1.5):
        with pytest.raises(attnplan.InvalidArguments) as info:
            stream_handle(bad)
        assert info.value.argument == "stream"


def test_cli_info_explain_run(capsys):
    assert main(["info"]) == 0
    assert "reference" in capsys.readouterr().out
    assert main(["explain", "--causal", "--dtype", "bf16", "--device", "sm_90", "--head-dim", "64"]) == 0
    text = capsys.readouterr().out
    assert "nvrtc" in text and "reference" in text
    main(["explain", "--dtype", "f64", "--device", "sm_90"])  # 1 where no backend accepts (no CuPy)
    text = capsys.readouterr().out
    assert "'f64'" in text                                # nvrtc's reason
    assert "[cuda13]" in text or "CuPy" not in text       # pip hints are printed verbatim
    assert main(["run", "--seqlen-q", "16", "--heads-q", "2", "--causal"]) == 0
    text = capsys.readouterr().out
    assert "reference" in text and "error" in text.lower()


def test_cli_bad_flags_fail_cleanly(capsys):
    assert main(["run", "--dtype", "f17"]) != 0
    assert "dtype" in capsys.readouterr().out
    assert main(["explain", "--heads-q", "3", "--heads-kv", "2"]) != 0
    assert "heads_kv" in capsys.readouterr().out + capsys.readouterr().err


def test_cli_cache_list_and_clear(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ATTNPLAN_CACHE_DIR", str(tmp_path))
    (tmp_path / "junk.cubin").write_bytes(b"x")
    assert main(["cache", "list"]) == 0
    assert str(tmp_path) in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert not list(tmp_path.glob("*.cubin"))
