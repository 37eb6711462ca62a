// The compile-time switches every attention kernel reads (set by backends/nvrtc/dispatch.py as -D
// macros), with their defaults, in one place.  The mask switches (IS_CAUSAL, HAS_WINDOW,
// HAS_SINK_TOKENS) default in mask.cuh, HAS_SINK_LOGITS in softmax.cuh, the dtype in types.cuh.
#pragma once

#if !defined(HEAD_DIM) || !defined(BLOCK_M) || !defined(BLOCK_N) || !defined(NUM_WARPS)
#error "HEAD_DIM, BLOCK_M, BLOCK_N and NUM_WARPS must be defined"
#endif
#ifndef HEAD_DIM_V
#define HEAD_DIM_V HEAD_DIM
#endif
#ifndef HAS_SINK_LOGITS
#define HAS_SINK_LOGITS 0
#endif
#ifndef HAS_ALIBI
#define HAS_ALIBI 0
#endif
#ifndef HAS_SOFTCAP
#define HAS_SOFTCAP 0
#endif
#ifndef IS_VARLEN
#define IS_VARLEN 0
#endif
#ifndef IS_PAGED
#define IS_PAGED 0
#endif
#ifndef HAS_DROPOUT
#define HAS_DROPOUT 0
#endif
