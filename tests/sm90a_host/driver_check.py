"""Checks backends/nvrtc/sm90a/tma.py against the real driver on a GPU machine (not part of the CPU
tests): every attention map it computes must encode, and each documented rule that tma.py enforces
must also be one the driver enforces (the value at the edge encodes, the one past it fails), except
the one rule the documentation states and driver 580.159 does not enforce.  Calls
libcuda through ctypes, so it needs neither cuda-python nor attnplan's dependencies beyond attrs.

    python3 tests/sm90a_host/driver_check.py
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_tma():
    """tma.py with attnplan.errors, loaded from the tree without importing the attnplan package."""
    package = types.ModuleType("attnplan")
    package.__path__ = [str(ROOT / "attnplan")]
    sys.modules.setdefault("attnplan", package)
    for name, path in (("attnplan.errors", ROOT / "attnplan" / "errors.py"),
                       ("sm90a_tma", ROOT / "backends" / "nvrtc" / "sm90a" / "tma.py")):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules["sm90a_tma"]


class CtypesDriver:
    """The part of cuda.bindings.driver that tma.encode uses, over libcuda."""

    CUresult = types.SimpleNamespace(CUDA_SUCCESS=0)
    CUtensorMapDataType = CUtensorMapInterleave = CUtensorMapSwizzle = staticmethod(int)
    CUtensorMapL2promotion = CUtensorMapFloatOOBfill = staticmethod(int)

    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")
        device, context = ctypes.c_int(), ctypes.c_void_p()     # encoding needs a current context
        assert self.lib.cuInit(0) == 0, "cuInit failed"
        assert self.lib.cuDeviceGet(ctypes.byref(device), 0) == 0, "cuDeviceGet failed"
        assert self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(context), device) == 0, "no primary context"
        assert self.lib.cuCtxSetCurrent(context) == 0, "cuCtxSetCurrent failed"

    def cuTensorMapEncodeTiled(self, data_type, rank, address, dims, strides, box, element_strides, interleave,
                               swizzle, l2_promotion, oob_fill):
        words = (ctypes.c_uint64 * 16)()
        u64, u32 = ctypes.c_uint64, ctypes.c_uint32
        result = self.lib.cuTensorMapEncodeTiled(
            ctypes.byref(words), ctypes.c_int(data_type), u32(rank), ctypes.c_void_p(address),
            (u64 * max(1, len(dims)))(*dims), (u64 * max(1, len(strides)))(*strides),
            (u32 * max(1, len(box)))(*box), (u32 * max(1, len(element_strides)))(*element_strides),
            ctypes.c_int(interleave), ctypes.c_int(swizzle), ctypes.c_int(l2_promotion), ctypes.c_int(oob_fill))
        return result, types.SimpleNamespace(opaque=list(words))


def main() -> int:
    try:
        import attrs
    except ImportError:
        print("SKIP: attrs is not installed")
        return 0
    tma = load_tma()
    driver = CtypesDriver()
    address = 0x7F0000000000
    failures = []

    def driver_accepts(params, at=address) -> bool:
        result, _ = driver.cuTensorMapEncodeTiled(
            int(params.data_type), params.rank, at, list(params.global_dims), list(params.global_strides_bytes),
            list(params.box_dims), list(params.element_strides), int(params.interleave), int(params.swizzle),
            int(params.l2_promotion), int(params.oob_fill))
        return result == 0

    # Every map of the attention layouts encodes, through tma.encode itself.
    count = 0
    for head_dim in (32, 64, 96, 128, 192, 256):
        for seqlen in (1, 17, 113, 1023):
            for dtype in ("bf16", "f16", "e4m3"):
                shapes = {"bshd": (2, seqlen, 6, head_dim), "bhsd": (2, 6, seqlen, head_dim),
                          "thd": (seqlen * 3, 6, head_dim), "paged": (37, 64, 2, head_dim)}
                for layout, shape in shapes.items():
                    for block in (64, 128):
                        blob = tma.encode(tma.attention_map(layout, shape, dtype, block).params, address, driver)
                        assert len(blob) == 128
                        count += 1
    print(f"{count} attention maps encoded")

    # Each rule: (what, params at the edge, params one past it); the driver must agree with tma.py.
    bf16 = tma.DataType.BFLOAT16
    build = lambda shape, strides, box, swizzle=tma.Swizzle.B128, **kw: tma.tensor_map_params(
        shape, strides, bf16, box, swizzle, **kw)
    base = build((512, 128), (128, 1), (64, 64))
    interleaved = build((4, 8, 16), (128, 16, 1), (16, 8, 1), tma.Swizzle.B32, interleave=tma.Interleave.B32)
    rules = [
        ("box dim 256 / 257", attrs.evolve(base, box_dims=(64, 256)), attrs.evolve(base, box_dims=(64, 257))),
        ("box dim 1 / 0", attrs.evolve(base, box_dims=(64, 1)), attrs.evolve(base, box_dims=(64, 0))),
        ("inner box 16 / 24 bytes", attrs.evolve(base, box_dims=(8, 64), swizzle=tma.Swizzle.NONE),
         attrs.evolve(base, box_dims=(12, 64), swizzle=tma.Swizzle.NONE)),
        ("128B swizzle: inner box 128 / 144 bytes", base, attrs.evolve(base, box_dims=(72, 64))),
        ("64B swizzle: inner box 64 / 80 bytes", attrs.evolve(base, box_dims=(32, 64), swizzle=tma.Swizzle.B64),
         attrs.evolve(base, box_dims=(40, 64), swizzle=tma.Swizzle.B64)),
        ("32B swizzle: inner box 32 / 48 bytes", attrs.evolve(base, box_dims=(16, 64), swizzle=tma.Swizzle.B32),
         attrs.evolve(base, box_dims=(24, 64), swizzle=tma.Swizzle.B32)),
        ("stride 16 / 24 bytes", attrs.evolve(base, global_dims=(8, 512), global_strides_bytes=(16,), box_dims=(8, 64)),
         attrs.evolve(base, global_dims=(8, 512), global_strides_bytes=(24,), box_dims=(8, 64))),
        ("stride 2^40-16 / 2^40", attrs.evolve(base, global_dims=(128, 2), global_strides_bytes=(2**40 - 16,)),
         attrs.evolve(base, global_dims=(128, 2), global_strides_bytes=(2**40,))),
        ("dim 2^32 / 2^32+1", attrs.evolve(base, global_dims=(128, 2**32)),
         attrs.evolve(base, global_dims=(128, 2**32 + 1))),
        ("dim 1 / 0", attrs.evolve(base, global_dims=(128, 1)), attrs.evolve(base, global_dims=(128, 0))),
        ("element stride 8 / 9", attrs.evolve(base, element_strides=(1, 8)),
         attrs.evolve(base, element_strides=(1, 9))),
        ("element stride 1 / 0", attrs.evolve(base, element_strides=(1, 1)),
         attrs.evolve(base, element_strides=(1, 0))),
        ("rank 5 / 6", build((2, 2, 2, 2, 64), (256, 128, 64, 64, 1), (64, 1, 1, 1, 1)),
         attrs.evolve(build((2, 2, 2, 2, 64), (256, 128, 64, 64, 1), (64, 1, 1, 1, 1)), rank=6,
                      global_dims=(64, 2, 2, 2, 2, 2), global_strides_bytes=(128,) * 5, box_dims=(64,) + (1,) * 5,
                      element_strides=(1,) * 6)),
        ("interleave with rank 3 / 2", attrs.evolve(interleaved, interleave=tma.Interleave.B16),
         attrs.evolve(base, interleave=tma.Interleave.B16, swizzle=tma.Swizzle.NONE)),
        # Documented ("swizzle must be CU_TENSOR_MAP_SWIZZLE_32B"), but driver 580.159 encodes it anyway;
        # tma.py keeps the documented rule.
        ("32B interleave: 32B / 128B swizzle", interleaved, attrs.evolve(interleaved, swizzle=tma.Swizzle.B128),
         "documented only"),
        ("32B interleave: strides 32 / 48 bytes", interleaved,
         attrs.evolve(interleaved, global_strides_bytes=(48, 64))),
        ("NaN fill: bf16 / uint8", attrs.evolve(base, oob_fill=tma.OobFill.NAN_REQUEST_ZERO_FMA),
         attrs.evolve(base, data_type=tma.DataType.UINT8, oob_fill=tma.OobFill.NAN_REQUEST_ZERO_FMA)),
    ]
    for what, edge, past, *documented_only in rules:
        verdict = (driver_accepts(edge), driver_accepts(past))
        print(f"{what:45s} driver: edge {'ok' if verdict[0] else 'REFUSED'}, past {'ok' if verdict[1] else 'refused'}"
              + (" (documented only)" if documented_only else ""))
        if verdict != ((True, True) if documented_only else (True, False)):
            failures.append(what)
    for what, params, good, bad in (("address 16 / 8 aligned", base, address + 16, address + 8),
                                    ("32B interleave: address 32 / 16 aligned", interleaved, address + 32,
                                     address + 16)):
        verdict = (driver_accepts(params, good), driver_accepts(params, bad))
        print(f"{what:45s} driver: edge {'ok' if verdict[0] else 'REFUSED'}, past {'ok' if verdict[1] else 'refused'}")
        if verdict != (True, False):
            failures.append(what)
    print("ALL AGREE" if not failures else f"DISAGREE: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
