// ---------------------------------------------------------------- small-batch projections
// A decode step of a few tokens is bound by reading each weight once from HBM. Here a block owns
// two weight rows (its warps split k) and streams them with 16-byte loads that bypass L1, while
// the T (<= 8) input rows stay in L1/L2 for every block. The RMS norm of the input (prologue) and the residual add
// or SwiGLU (epilogue) are folded in, so a decode layer runs no separate norm, add or
// activation kernel, and no split-K reduce:
//   NORM:   out[t][r]  = (w[r] . (x[t] * g)) * inv_rms(x[t])
//   ADD:    out[t][r] += w[r] . x[t]                      (out is the residual stream, in place)
//   SWIGLU: out[t][p]  = silu(a) * b, a = (w[p] . (x[t] * g)) * inv_rms(x[t]),
//                       b = (w[p + n] . (x[t] * g)) * inv_rms(x[t])   (w = [gate; up], 2n rows)
// inv_rms(x[t]) = 1 / sqrt(mean(x[t]^2) + eps) is summed by each warp over the same x loads it
// needs for the dot products (no extra pass). Requires k % 8 == 0 and 16-byte aligned rows.

#define GEMV_NORM 1
#define GEMV_ADD 2
#define GEMV_SWIGLU 3
// NORM with rope and the KV-cache write folded in (fused Q/K/V weight, full rotary width): a
// block owns one rotation pair of a head, out is the query buffer [T, heads * hd], keys and
// values go straight to the paged cache.
#define GEMV_ROPE 4

// What the rope epilogue needs (GEMV_ROPE only; zeros otherwise).
struct GemvRope {
    const u32* positions;
    const u32* slot_mapping;
    act_t* k_cache;
    act_t* v_cache;
    int heads, kv_heads, hd, neox;
    float log2_theta;
    u64 num_slots;
};
// Chunks of 8 weights in flight per row and lane: 4 x 16 B x 2 rows x 32 lanes = 4 KiB a warp.
#define GEMV_UNROLL 4
// Warps of a block, all on the same row pair (k = 4096: one round of loads each).
#define GEMV_WARPS 4

// The weight is read exactly once: keep it out of L1 (where x lives).
__device__ __forceinline__ uint4 ld_stream16(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// Eight act_t values (one 16-byte load) to f32.
__device__ __forceinline__ void u4_to_f32(const uint4& v, float* f) {
    act8 a;
    a.w[0] = v.x;
    a.w[1] = v.y;
    a.w[2] = v.z;
    a.w[3] = v.w;
    act8_to_f32(a, f);
}

template <int MODE, int T>
__device__ __forceinline__ void gemv_impl(act_t* __restrict__ out, const act_t* __restrict__ x,
                                          const act_t* __restrict__ w, const float* __restrict__ g,
                                          int ntok, int n, int k, float eps, const GemvRope rp) {
    // One block per row pair; its GEMV_WARPS warps split k, so each warp has one or a few
    // rounds of loads in flight (a warp walking a whole row alone is bound by load latency).
    __shared__ float red[GEMV_WARPS][3 * T];
    const int pair = blockIdx.x;
    const int wid = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    int r0, r1;
    bool has1;
    if (MODE == GEMV_SWIGLU) {
        r0 = pair;
        r1 = pair + n;
        has1 = true;
    } else if (MODE == GEMV_ROPE) {
        // Pair j of head hh: dims (j, j + hd/2) for neox, (2j, 2j + 1) interleaved.
        const int half = rp.hd >> 1;
        const int hh = pair / half, j = pair - hh * half;
        r0 = hh * rp.hd + (rp.neox ? j : 2 * j);
        r1 = r0 + (rp.neox ? half : 1);
        has1 = true;
    } else {
        r0 = 2 * pair;
        has1 = r0 + 1 < n;
        r1 = has1 ? r0 + 1 : r0;
    }
    const uint4* w0 = (const uint4*)(w + (u64)r0 * k);
    const uint4* w1 = (const uint4*)(w + (u64)r1 * k);
    const int nch = k >> 3;
    const int stride = 32 * GEMV_WARPS;
    float acc0[T], acc1[T], ss[T];
#pragma unroll
    for (int t = 0; t < T; t++) acc0[t] = acc1[t] = ss[t] = 0.f;

    // The next kernel (the following projection) may launch now: it only streams its weight
    // until our writes are done.
    pdl_trigger();
    uint4 a[GEMV_UNROLL], b[GEMV_UNROLL];
    const int first = wid * 32 + lane;
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
        const int c = first + stride * u;
        if (c < nch) {
            a[u] = ld_stream16(w0 + c);
            b[u] = ld_stream16(w1 + c);
        }
    }
    // x and the residual are the predecessor's output: wait for it (the first weight loads
    // above are already in flight).
    pdl_wait();
    for (int c0 = first; c0 < nch; c0 += stride * GEMV_UNROLL) {
        if (c0 != first) {
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                const int c = c0 + stride * u;
                if (c < nch) {
                    a[u] = ld_stream16(w0 + c);
                    b[u] = ld_stream16(w1 + c);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int c = c0 + stride * u;
            if (c >= nch) break;
            float wa[8], wb[8], gg[8];
            u4_to_f32(a[u], wa);
            u4_to_f32(b[u], wb);
            if (MODE != GEMV_ADD) {
                const float4 g0 = __ldg((const float4*)(g + c * 8));
                const float4 g1 = __ldg((const float4*)(g + c * 8 + 4));
                gg[0] = g0.x; gg[1] = g0.y; gg[2] = g0.z; gg[3] = g0.w;
                gg[4] = g1.x; gg[5] = g1.y; gg[6] = g1.z; gg[7] = g1.w;
            }
#pragma unroll
            for (int t = 0; t < T; t++) {
                if (t < ntok) {
                    float xf[8];
                    u4_to_f32(__ldg((const uint4*)(x + (u64)t * k) + c), xf);
                    float s0 = 0.f, s1 = 0.f;
#pragma unroll
                    for (int e = 0; e < 8; e++) {
                        if (MODE != GEMV_ADD) {
                            ss[t] += xf[e] * xf[e];
                            xf[e] *= gg[e];
                        }
                        s0 += wa[e] * xf[e];
                        s1 += wb[e] * xf[e];
                    }
                    acc0[t] += s0;
                    acc1[t] += s1;
                }
            }
        }
    }

    // Warp sums, then across the block's warps.
#pragma unroll
    for (int t = 0; t < T; t++) {
        const float s0 = warp_sum(acc0[t]);
        const float s1 = warp_sum(acc1[t]);
        const float q = MODE != GEMV_ADD ? warp_sum(ss[t]) : 0.f;
        if (lane == 0) {
            red[wid][3 * t] = s0;
            red[wid][3 * t + 1] = s1;
            red[wid][3 * t + 2] = q;
        }
    }
    __syncthreads();
    if (wid != 0) return;
    const int t = lane;
    if (t >= ntok || t >= T) return;
    float s0 = 0.f, s1 = 0.f, q = 0.f;
#pragma unroll
    for (int i = 0; i < GEMV_WARPS; i++) {
        s0 += red[i][3 * t];
        s1 += red[i][3 * t + 1];
        q += red[i][3 * t + 2];
    }
    const float inv = MODE != GEMV_ADD ? rsqrtf(q / (float)k + eps) : 1.f;
    if (MODE == GEMV_ROPE) {
        const int half = rp.hd >> 1;
        const int hh = pair / half, j = pair - hh * half;
        float y0 = s0 * inv, y1 = s1 * inv;
        if (hh < rp.heads + rp.kv_heads) {
            float sn, cs;
            rope_sincos((float)rp.positions[t], j, rp.hd, rp.log2_theta, &sn, &cs);
            const float a = y0, b = y1;
            y0 = a * cs - b * sn;
            y1 = a * sn + b * cs;
        }
        const int d0 = r0 - hh * rp.hd, d1 = r1 - hh * rp.hd;
        if (hh < rp.heads) {
            act_t* o = out + (u64)t * rp.heads * rp.hd + (u64)hh * rp.hd;
            o[d0] = f2act(y0);
            o[d1] = f2act(y1);
        } else {
            const u32 slot = rp.slot_mapping[t];
            if (slot != 0xffffffffu && (u64)slot < rp.num_slots) {
                const bool is_k = hh < rp.heads + rp.kv_heads;
                const int kvh = hh - rp.heads - (is_k ? 0 : rp.kv_heads);
                act_t* c = (is_k ? rp.k_cache : rp.v_cache) + ((u64)slot * rp.kv_heads + kvh) * rp.hd;
                c[d0] = f2act(y0);
                c[d1] = f2act(y1);
            }
        }
    } else if (MODE == GEMV_SWIGLU) {
        const float gv = s0 * inv, uv = s1 * inv;
        out[(u64)t * n + r0] = f2act(gv / (1.f + __expf(-gv)) * uv);
    } else if (MODE == GEMV_NORM) {
        out[(u64)t * n + r0] = f2act(s0 * inv);
        if (has1) out[(u64)t * n + r1] = f2act(s1 * inv);
    } else {
        act_t* o = out + (u64)t * n;
        o[r0] = f2act(act2f(o[r0]) + s0);
        if (has1) o[r1] = f2act(act2f(o[r1]) + s1);
    }
}

#define GEMV_KERNEL(mode_name, MODE, T)                                                         \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS)                               \
        gemv_##mode_name##_t##T(act_t* out, const act_t* x, const act_t* w, const float* g,        \
                                int ntok, int n, int k, float eps) {                            \
        gemv_impl<MODE, T>(out, x, w, g, ntok, n, k, eps, GemvRope{});                          \
    }

GEMV_KERNEL(norm, GEMV_NORM, 1)
GEMV_KERNEL(norm, GEMV_NORM, 2)
GEMV_KERNEL(norm, GEMV_NORM, 4)
GEMV_KERNEL(norm, GEMV_NORM, 8)
GEMV_KERNEL(add, GEMV_ADD, 1)
GEMV_KERNEL(add, GEMV_ADD, 2)
GEMV_KERNEL(add, GEMV_ADD, 4)
GEMV_KERNEL(add, GEMV_ADD, 8)
GEMV_KERNEL(swiglu, GEMV_SWIGLU, 1)
GEMV_KERNEL(swiglu, GEMV_SWIGLU, 2)
GEMV_KERNEL(swiglu, GEMV_SWIGLU, 4)
GEMV_KERNEL(swiglu, GEMV_SWIGLU, 8)

// norm + fused Q/K/V projection + rope + KV-cache write (n = (heads + 2 kv_heads) * hd rows,
// one block per rotation pair: n / 2 blocks).
#define GEMV_ROPE_KERNEL(T)                                                                     \
    extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_rope_t##T(                \
        act_t* q_out, const act_t* x, const act_t* w, const float* g, int ntok, int n, int k,   \
        float eps, const u32* positions, const u32* slot_mapping, act_t* k_cache,               \
        act_t* v_cache, int heads, int kv_heads, int hd, int neox, float log2_theta,            \
        u64 num_slots) {                                                                        \
        const GemvRope rp{positions, slot_mapping, k_cache, v_cache, heads,                     \
                          kv_heads,  hd,           neox,    log2_theta, num_slots};             \
        gemv_impl<GEMV_ROPE, T>(q_out, x, w, g, ntok, n, k, eps, rp);                           \
    }
GEMV_ROPE_KERNEL(1)
GEMV_ROPE_KERNEL(2)
GEMV_ROPE_KERNEL(4)
GEMV_ROPE_KERNEL(8)
