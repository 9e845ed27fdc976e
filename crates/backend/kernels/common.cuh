// Shared definitions for every rvllm kernel. Compiled by NVRTC (no host headers: only
// cuda_bf16.h / cuda_fp16.h from the toolkit include dir).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned char u8;
typedef __nv_bfloat16 bf16;

#define RV_INF __int_as_float(0x7f800000)

// Eight bf16 values moved as one 16-byte access. `bf16x8{}` is all zeros.
struct __align__(16) bf16x8 {
    u32 w[4];
};

__device__ __forceinline__ void bf16x8_to_f32(const bf16x8& v, float* f) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        // bf16 -> f32 is a 16-bit shift.
        f[2 * i] = __uint_as_float(v.w[i] << 16);
        f[2 * i + 1] = __uint_as_float(v.w[i] & 0xffff0000u);
    }
}

__device__ __forceinline__ bf16x8 f32_to_bf16x8(const float* f) {
    bf16x8 v;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        __nv_bfloat162 h = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
        v.w[i] = *reinterpret_cast<u32*>(&h);
    }
    return v;
}

// Programmatic dependent launch (Hopper+): a kernel launched with the PDL attribute may start
// while its predecessor still runs; `pdl_wait` blocks until the predecessor finished and its
// writes are visible, so only work that reads nothing the predecessor writes (streaming a
// weight) may come before it. `pdl_trigger` lets the successor launch early. Both are no-ops
// without PDL (and compile to nothing before sm_90).
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, <= 1024). `red` holds >= 32 floats.
__device__ __forceinline__ float block_sum(float v, float* red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = lane < nw ? red[lane] : 0.f;
    return warp_sum(r);
}

__device__ __forceinline__ float block_max(float v, float* red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = lane < nw ? red[lane] : -RV_INF;
    return warp_max(r);
}
