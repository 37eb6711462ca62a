"""KernelSku and PrecisionGuarantee: immutable values, a JSON form that round-trips exactly, clear
errors for bad JSON, and what the reference backend's SKU promises."""

import json

import attrs
import ml_dtypes
import numpy as np
import pytest

from attnplan import AttentionDescriptor, KernelSku, Plan, PrecisionGuarantee

PRECISION = PrecisionGuarantee(math_precision="bf16", accumulator="f32", deterministic=False, bit_stable=False)
DESC = AttentionDescriptor(batch=1, seqlen_q=6, seqlen_kv=9, heads_q=2, heads_kv=1, head_dim=8, dtype="f64",
                           causal=True, return_lse=True)


def make_sku(**changes):
    fields = dict(backend="nvrtc", kernel="attn_fwd_bf16_d64", arch="sm_90", dtype="bf16", precision=PRECISION,
                  config={"block_m": 128, "block_n": 64, "num_warps": 4, "stages": [2, 1], "name": "x"},
                  workspace_bytes=4096, versions={"attnplan": "0.1.0", "nvrtc": "13.0"}, notes="a note")
    fields.update(changes)
    return KernelSku(**fields)


# -- value semantics -------------------------------------------------------------------------------

def test_precision_guarantee_is_frozen():
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        PRECISION.deterministic = True
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        PRECISION.math_precision = "f64"
    assert PRECISION.deterministic is False and PRECISION.math_precision == "bf16"


def test_kernel_sku_is_frozen():
    sku = make_sku()
    for field, value in (("backend", "cudnn"), ("config", ()), ("workspace_bytes", 0), ("notes", "")):
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(sku, field, value)
    assert sku.backend == "nvrtc" and sku.workspace_bytes == 4096


def test_config_and_versions_are_stored_sorted_and_hashable():
    sku = make_sku()
    assert [k for k, _ in sku.config] == sorted(sku.config_dict)
    assert sku.config_dict == {"block_m": 128, "block_n": 64, "num_warps": 4, "stages": (2, 1), "name": "x"}
    assert sku.versions_dict == {"attnplan": "0.1.0", "nvrtc": "13.0"}
    reordered = make_sku(config={"name": "x", "stages": [2, 1], "num_warps": 4, "block_n": 64, "block_m": 128},
                         versions={"nvrtc": "13.0", "attnplan": "0.1.0"})
    assert reordered == sku and hash(reordered) == hash(sku)
    assert make_sku(config={"block_m": 64}) != sku
    assert len({sku, reordered, make_sku(notes="other")}) == 2


def test_identity_ignores_versions_notes_and_workspace():
    sku = make_sku()
    same_kernel = make_sku(versions={"attnplan": "9.9"}, notes="", workspace_bytes=0)
    assert same_kernel.identity() == sku.identity() and same_kernel != sku
    for change in (dict(backend="cudnn"), dict(kernel="k2"), dict(arch="sm_80"), dict(dtype="f16"),
                   dict(config={"block_m": 64})):
        assert make_sku(**change).identity() != sku.identity(), change


# -- JSON ------------------------------------------------------------------------------------------

def test_to_dict_is_plain_json_data():
    data = make_sku().to_dict()
    assert data["precision"] == {"math_precision": "bf16", "accumulator": "f32", "deterministic": False,
                                 "bit_stable": False}
    assert data["config"]["stages"] == [2, 1] and data["versions"] == {"attnplan": "0.1.0", "nvrtc": "13.0"}
    assert json.loads(json.dumps(data)) == data


def test_json_round_trip_is_equal():
    sku = make_sku()
    text = sku.to_json()
    assert json.loads(text)["config"]["block_m"] == 128
    again = KernelSku.from_json(text)
    assert again == sku and hash(again) == hash(sku)
    assert again.config_dict == sku.config_dict and again.versions_dict == sku.versions_dict
    assert again.precision == sku.precision and again.notes == "a note" and again.workspace_bytes == 4096
    assert again.to_json() == text
    assert KernelSku.from_dict(sku.to_dict()) == sku


def test_json_is_canonical():
    a = make_sku().to_json()
    b = make_sku(config={"name": "x", "stages": [2, 1], "num_warps": 4, "block_n": 64, "block_m": 128}).to_json()
    assert a == b
    assert list(json.loads(a)) == sorted(json.loads(a))


def test_minimal_sku_round_trips():
    sku = KernelSku(backend="b", kernel="k", arch="cpu", dtype="f32", precision=PRECISION)
    assert sku.config == () and sku.versions == () and sku.workspace_bytes == 0 and sku.notes == ""
    assert KernelSku.from_json(sku.to_json()) == sku


@pytest.mark.parametrize("text, error, words", [
    ("not json", ValueError, "Expecting value"),
    ('{"backend": "nvrtc"', ValueError, ""),
    ("{}", ValueError, "precision"),
    ('{"backend": "reference"}', ValueError, "precision"),
])
def test_from_json_rejects_malformed_text(text, error, words):
    with pytest.raises(error) as info:
        KernelSku.from_json(text)
    assert words in str(info.value)


def test_from_json_rejects_missing_and_unknown_fields():
    data = make_sku().to_dict()
    with pytest.raises(ValueError, match="surprise"):
        KernelSku.from_json(json.dumps({**data, "surprise": 1}))
    with pytest.raises(ValueError, match="kernel"):
        KernelSku.from_json(json.dumps({k: v for k, v in data.items() if k != "kernel"}))
    with pytest.raises(ValueError, match="accumulator"):
        KernelSku.from_json(json.dumps({**data, "precision": {"math_precision": "f32", "deterministic": True,
                                                              "bit_stable": True}}))
    with pytest.raises(ValueError, match="rounding"):
        KernelSku.from_json(json.dumps({**data, "precision": {**data["precision"], "rounding": "rne"}}))


# -- the reference backend's SKU -----------------------------------------------------------------

def test_reference_sku_promises_deterministic_float64():
    for desc in (DESC, DESC.replace(direction="backward"), DESC.replace(dtype="bf16")):
        sku = Plan.select(desc, "cpu").sku
        assert sku.backend == "reference" and sku.arch == "cpu" and sku.dtype == desc.dtype
        assert sku.precision.deterministic is True
        assert sku.precision.math_precision == "f64" and sku.precision.accumulator == "f64"
        assert sku.config_dict == {"compute": "f64", "emulate_dtype": False}
        assert sku.versions_dict["numpy"] == np.__version__ and "attnplan" in sku.versions_dict
        assert sku.workspace_bytes == 0
        assert KernelSku.from_json(sku.to_json()) == sku


def _pinned(desc, **config):
    base = Plan.select(desc, "cpu").sku
    return Plan.from_sku(desc, KernelSku.from_dict({**base.to_dict(), "config": {**base.config_dict, **config}}),
                         "cpu")


def test_reference_sku_computing_in_f32_says_so_and_does_so():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 6, 2, 8))
    k, v = rng.standard_normal((2, 1, 9, 1, 8))
    plan64 = Plan.select(DESC, "cpu")
    plan32 = _pinned(DESC, compute="f32")
    precision = plan32.sku.precision
    assert precision.math_precision == "f32" and precision.accumulator == "f32" and precision.deterministic
    assert plan32.sku.config_dict["compute"] == "f32"
    assert Plan.from_sku(DESC, KernelSku.from_json(plan32.sku.to_json()), "cpu").sku == plan32.sku
    out64, lse64 = plan64.run(q=q, k=k, v=v)
    out32, lse32 = plan32.run(q=q, k=k, v=v)
    assert out32.dtype == np.float64                        # the output dtype follows the inputs
    np.testing.assert_allclose(out32, out64, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(out32, out64)                 # computed in float32: not the same bits
    assert np.abs(out32 - out64).max() < 1e-5


def test_reference_sku_emulating_the_input_dtype():
    desc = DESC.replace(dtype="bf16")
    plan = _pinned(desc, emulate_dtype=True)
    assert plan.sku.config_dict == {"compute": "f64", "emulate_dtype": True}
    assert Plan.from_sku(desc, plan.sku, "cpu").sku == plan.sku
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 6, 2, 8)).astype(ml_dtypes.bfloat16)
    k, v = rng.standard_normal((2, 1, 9, 1, 8)).astype(ml_dtypes.bfloat16)
    exact = Plan.select(desc, "cpu").run(q=q, k=k, v=v)
    emulated = plan.run(q=q, k=k, v=v)
    assert emulated.out.dtype == exact.out.dtype == np.dtype(ml_dtypes.bfloat16)
    assert not np.array_equal(emulated.out, exact.out)          # P was rounded to bf16 before P @ V
    np.testing.assert_allclose(emulated.out.astype(np.float64), exact.out.astype(np.float64), atol=3e-2)
    np.testing.assert_array_equal(emulated.lse, exact.lse)      # the LSE is not affected
