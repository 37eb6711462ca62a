// Lets the index-math headers (sm90a/layouts.cuh, sm90a/tile_scheduler.cuh, common/index_rules.cuh)
// compile as plain C++ too, so that host programs built with g++ can print and check what they
// define (tests/sm90a_host/, tests/host/).
// Under nvcc or NVRTC the CUDA qualifiers keep their meaning; elsewhere they are defined away.
#pragma once

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#ifndef __host__
#define __host__
#endif
#ifndef __device__
#define __device__
#endif
#ifndef __forceinline__
#define __forceinline__ inline
#endif
#endif
