"""The sm_90a kernel generation's host side (wgmma, TMA, warp specialization), in the making:
tma.py computes and encodes the TMA tensor maps its kernels take.  Not yet a registered generation."""
