// Lets the sm90a index-math headers (layouts.cuh, tile_scheduler.cuh) compile as plain C++ too, so a
// host program built with g++ can print and check every layout they define (tests/sm90a_host/).
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
