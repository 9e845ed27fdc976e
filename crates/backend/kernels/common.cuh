// Shared definitions for every rvllm kernel. Compiled by NVRTC (no host headers: only
// cuda_bf16.h / cuda_fp16.h from the toolkit include dir).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned char u8;
// The activation / weight / KV-cache element type `act_t`: bf16 by default, f16 when the program is
// compiled with -DRV_F16 (models run with --dtype float16; the loader compiles the whole source a
// second time and caches it under its own key). Kernels convert only through the helpers below
// (act2f / f2act / act8_to_f32 / f32_to_act8 / act_pack2 / act_bits), so one text serves both.
// Kernel names keep their `_bf16` suffix in both builds.
#ifdef RV_F16
typedef __half act_t;
#define RV_ACT_PTX "f16"
#else
typedef __nv_bfloat16 act_t;
#define RV_ACT_PTX "bf16"
#endif

#define RV_INF __int_as_float(0x7f800000)

__device__ __forceinline__ float act2f(act_t v) {
#ifdef RV_F16
    return __half2float(v);
#else
    return __bfloat162float(v);
#endif
}

__device__ __forceinline__ act_t f2act(float f) {
#ifdef RV_F16
    return __float2half_rn(f);
#else
    return __float2bfloat16_rn(f);
#endif
}

// The raw 16 bits of a value.
__device__ __forceinline__ unsigned short act_bits(act_t v) {
#ifdef RV_F16
    return __half_as_ushort(v);
#else
    return __bfloat16_as_ushort(v);
#endif
}

// Two floats as one 32-bit pair: `lo` in the low half (the lower index in memory).
__device__ __forceinline__ u32 act_pack2(float lo, float hi) {
#ifdef RV_F16
    __half2 h = __floats2half2_rn(lo, hi);
#else
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
#endif
    return *reinterpret_cast<u32*>(&h);
}

// Eight act_t values moved as one 16-byte access. `act8{}` is all zeros.
struct __align__(16) act8 {
    u32 w[4];
};

__device__ __forceinline__ void act8_to_f32(const act8& v, float* f) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
#ifdef RV_F16
        const float2 p = __half22float2(*reinterpret_cast<const __half2*>(&v.w[i]));
        f[2 * i] = p.x;
        f[2 * i + 1] = p.y;
#else
        // bf16 -> f32 is a 16-bit shift.
        f[2 * i] = __uint_as_float(v.w[i] << 16);
        f[2 * i + 1] = __uint_as_float(v.w[i] & 0xffff0000u);
#endif
    }
}

__device__ __forceinline__ act8 f32_to_act8(const float* f) {
    act8 v;
#pragma unroll
    for (int i = 0; i < 4; i++) v.w[i] = act_pack2(f[2 * i], f[2 * i + 1]);
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

#ifndef RV_F16
// bf16-only names, for kernels not yet written over act_t: they compile in the default build
// only, so such a kernel fails loudly in the f16 build instead of reading f16 data as bf16.
typedef __nv_bfloat16 bf16;
typedef act8 bf16x8;
__device__ __forceinline__ void bf16x8_to_f32(const bf16x8& v, float* f) { act8_to_f32(v, f); }
__device__ __forceinline__ bf16x8 f32_to_bf16x8(const float* f) { return f32_to_act8(f); }
#endif

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

// 1 / rms of one row (the RMS norm's scale, same formula as rms_norm_impl), on every thread of
// the block; `red` holds >= 32 floats. Kernels that consume a projection of the un-normed
// residual stream (weights with the norm folded in) apply it per token.
__device__ __forceinline__ float row_rstd(const act_t* __restrict__ x, int cols, float eps, float* red) {
    float ss = 0.f;
    if ((cols & 7) == 0) {
        for (int c = threadIdx.x; c < cols / 8; c += blockDim.x) {
            float f[8];
            act8_to_f32(((const act8*)x)[c], f);
#pragma unroll
            for (int e = 0; e < 8; e++) ss += f[e] * f[e];
        }
    } else {
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            const float f = act2f(x[c]);
            ss += f * f;
        }
    }
    ss = block_sum(ss, red);
    return rsqrtf(ss / (float)cols + eps);
}

// ---------------------------------------------------------------- rope helpers
// One formula for every rope path (rope_cache, rope_cache_v8, the Q/K/V GEMV's epilogue), so they
// rotate by bit-identical cos/sin: angle i of a token at `pos` is pos * theta^(-2i / rotary_dim).
__device__ __forceinline__ void rope_sincos(float pos, int i, int rotary_dim, float log2_theta,
                                            float* sn, float* cs) {
    const float inv_freq = exp2f(-log2_theta * (2.0f * (float)i) / (float)rotary_dim);
    sincosf(pos * inv_freq, sn, cs);
}

// The token's cos/sin table in shared memory: cs[0..half) cos, cs[half..2 half) sin. Ends with a
// barrier.
__device__ __forceinline__ void rope_table(float* cs, float pos, int half, int rotary_dim,
                                           float log2_theta) {
    for (int i = threadIdx.x; i < half; i += blockDim.x)
        rope_sincos(pos, i, rotary_dim, log2_theta, &cs[half + i], &cs[i]);
    __syncthreads();
}

// Where query-or-key head `head` (queries first, then keys) of token t reads and writes in the
// rope kernels: its source row, its rotated copy (null for keys when k_dst is null) and its
// cache row (keys only, null when the token writes no KV).
struct RopeHead {
    const act_t* src;
    act_t* dst;
    act_t* kc;
};
__device__ __forceinline__ RopeHead rope_head(int head, u64 t, const act_t* q_src, act_t* q_dst,
                                              const act_t* k_src, act_t* k_dst, u64 q_stride,
                                              u64 k_stride, act_t* k_cache, bool write, u32 slot,
                                              int heads, int kv_heads, int hd) {
    const bool is_q = head < heads;
    const int h = is_q ? head : head - heads;
    RopeHead r;
    r.src = is_q ? q_src + t * q_stride + (u64)h * hd : k_src + t * k_stride + (u64)h * hd;
    r.dst = is_q ? q_dst + t * (u64)heads * hd + (u64)h * hd
                 : (k_dst ? k_dst + t * (u64)kv_heads * hd + (u64)h * hd : nullptr);
    r.kc = (!is_q && write) ? k_cache + (u64)slot * kv_heads * hd + (u64)h * hd : nullptr;
    return r;
}
