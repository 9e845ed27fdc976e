// Weight conversion, dummy weights, embedding, norms, elementwise ops, rope + KV-cache write.

// ---------------------------------------------------------------- weight conversion
// Source dtype codes (must match cuda/mod.rs): 0 f32, 1 f16, 2 bf16, 3 q4_0, 4 q4_1, 5 q8_0.
__device__ __forceinline__ float load_f16_bytes(const u8* p) {
    unsigned short bits = (unsigned short)p[0] | ((unsigned short)p[1] << 8);
    return __half2float(__ushort_as_half(bits));
}

__device__ __forceinline__ float weight_elem(const u8* __restrict__ src, u64 i, int dtype) {
    switch (dtype) {
    case 0: {
        const u8* p = src + i * 4;
        u32 bits = (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
        return __uint_as_float(bits);
    }
    case 1: return load_f16_bytes(src + i * 2);
    case 2: {
        const u8* p = src + i * 2;
        u32 bits = ((u32)p[0] | ((u32)p[1] << 8)) << 16;
        return __uint_as_float(bits);
    }
    case 3: {  // q4_0: 18 bytes = f16 d + 16 bytes of nibbles; j<16 low nibble, j>=16 high
        u64 b = i >> 5; int j = (int)(i & 31);
        const u8* p = src + b * 18;
        float d = load_f16_bytes(p);
        u8 q = p[2 + (j & 15)];
        int v = j < 16 ? (q & 15) : (q >> 4);
        return (float)(v - 8) * d;
    }
    case 4: {  // q4_1: f16 d, f16 m, 16 bytes
        u64 b = i >> 5; int j = (int)(i & 31);
        const u8* p = src + b * 20;
        float d = load_f16_bytes(p), m = load_f16_bytes(p + 2);
        u8 q = p[4 + (j & 15)];
        int v = j < 16 ? (q & 15) : (q >> 4);
        return (float)v * d + m;
    }
    case 5: {  // q8_0: f16 d, 32 int8
        u64 b = i >> 5; int j = (int)(i & 31);
        const u8* p = src + b * 34;
        float d = load_f16_bytes(p);
        return (float)(signed char)p[2 + j] * d;
    }
    }
    return 0.f;
}

extern "C" __global__ void convert_weight_bf16(act_t* __restrict__ dst, const u8* __restrict__ src,
                                               u64 n, int dtype) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        dst[i] = f2act(weight_elem(src, i, dtype));
}

extern "C" __global__ void convert_weight_f32(float* __restrict__ dst, const u8* __restrict__ src,
                                              u64 n, int dtype) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        dst[i] = weight_elem(src, i, dtype);
}

// ---------------------------------------------------------------- dummy weights
// Same stream as the CPU backend's sequential splitmix64: element i uses state
// (seed ^ C) + (i + 1) * C, so GPU and CPU dummy weights are identical (up to act_t rounding).
__device__ __forceinline__ float splitmix_uniform(u64 seed, u64 i) {
    const u64 C = 0x9e3779b97f4a7c15ull;
    u64 z = (seed ^ C) + (i + 1) * C;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    float unit = (float)(u32)(z >> 40) / 16777216.0f;
    return (unit * 2.0f - 1.0f) * 1e-3f;
}

extern "C" __global__ void dummy_fill_bf16(act_t* __restrict__ dst, u64 n, u64 seed) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        dst[i] = f2act(splitmix_uniform(seed, i));
}

extern "C" __global__ void dummy_fill_f32(float* __restrict__ dst, u64 n, u64 seed) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        dst[i] = splitmix_uniform(seed, i);
}

// ---------------------------------------------------------------- folded norms
// w[r, c] *= norm[c] (an RMS norm's weight folded into the projection that reads its output).
extern "C" __global__ void fold_norm_cols_bf16(act_t* __restrict__ w, const float* __restrict__ norm,
                                               u64 n, u64 cols) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        w[i] = f2act(act2f(w[i]) * norm[i % cols]);
}

extern "C" __global__ void fill_f32(float* __restrict__ dst, u64 n, float v) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        dst[i] = v;
}

// ---------------------------------------------------------------- row gathers
// out[r] = table[idx[r]] for r < rows (grid.x = rows). Out-of-range ids give a zero row.
extern "C" __global__ void gather_rows_bf16(act_t* __restrict__ out, const act_t* __restrict__ table,
                                            const u32* __restrict__ idx, int cols, u32 table_rows) {
    const int r = blockIdx.x;
    const u32 src = idx[r];
    act_t* o = out + (u64)r * cols;
    if (src >= table_rows) {
        for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = f2act(0.f);
        return;
    }
    const act_t* t = table + (u64)src * cols;
    if ((cols & 7) == 0) {
        const act8* t8 = (const act8*)t;
        act8* o8 = (act8*)o;
        for (int c = threadIdx.x; c < cols / 8; c += blockDim.x) o8[c] = t8[c];
    } else {
        for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = t[c];
    }
}

// ---------------------------------------------------------------- norms (one block per row)
template <typename W>
__device__ __forceinline__ float wload(const W* w, int i);
template <>
__device__ __forceinline__ float wload<float>(const float* w, int i) { return w[i]; }
template <>
__device__ __forceinline__ float wload<act_t>(const act_t* w, int i) { return act2f(w[i]); }

// If `residual` is non-null: residual += x (stored as act_t), then the norm reads the residual.
template <typename W>
__device__ void rms_norm_impl(act_t* __restrict__ out, act_t* __restrict__ residual,
                              const act_t* __restrict__ x, const W* __restrict__ w, int cols, float eps) {
    __shared__ float red[32];
    const u64 row = blockIdx.x;
    const act_t* xr = x + row * cols;
    act_t* rr = residual ? residual + row * cols : nullptr;
    act_t* orow = out + row * cols;
    float ss = 0.f;
    const bool vec = (cols & 7) == 0;
    if (vec) {
        for (int c = threadIdx.x; c < cols / 8; c += blockDim.x) {
            float f[8];
            act8_to_f32(((const act8*)xr)[c], f);
            if (rr) {
                float r[8];
                act8_to_f32(((const act8*)rr)[c], r);
#pragma unroll
                for (int e = 0; e < 8; e++) f[e] += r[e];
                act8 s = f32_to_act8(f);
                ((act8*)rr)[c] = s;
                act8_to_f32(s, f);
            }
#pragma unroll
            for (int e = 0; e < 8; e++) ss += f[e] * f[e];
        }
    } else {
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            float f = act2f(xr[c]);
            if (rr) {
                act_t s = f2act(f + act2f(rr[c]));
                rr[c] = s;
                f = act2f(s);
            }
            ss += f * f;
        }
    }
    ss = block_sum(ss, red);
    const float inv = rsqrtf(ss / (float)cols + eps);
    const act_t* src = rr ? rr : xr;  // this thread re-reads only what it wrote itself
    if (vec) {
        for (int c = threadIdx.x; c < cols / 8; c += blockDim.x) {
            float f[8];
            act8_to_f32(((const act8*)src)[c], f);
#pragma unroll
            for (int e = 0; e < 8; e++) f[e] = f[e] * inv * wload<W>(w, c * 8 + e);
            ((act8*)orow)[c] = f32_to_act8(f);
        }
    } else {
        for (int c = threadIdx.x; c < cols; c += blockDim.x)
            orow[c] = f2act(act2f(src[c]) * inv * wload<W>(w, c));
    }
}

extern "C" __global__ void rms_norm_wf32(act_t* out, act_t* residual, const act_t* x, const float* w,
                                         int cols, float eps) {
    rms_norm_impl<float>(out, residual, x, w, cols, eps);
}
extern "C" __global__ void rms_norm_wbf16(act_t* out, act_t* residual, const act_t* x, const act_t* w,
                                          int cols, float eps) {
    rms_norm_impl<act_t>(out, residual, x, w, cols, eps);
}

// ---------------------------------------------------------------- elementwise
// Asynchronous scheduling: a step's inputs that are the previous step's samples, still on the
// device. pairs[2i] = flat token index, pairs[2i+1] = row of the sampled ids.
extern "C" __global__ void patch_token_ids(u32* __restrict__ token_ids, const u32* __restrict__ ids,
                                           const u32* __restrict__ pairs, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) token_ids[pairs[2 * i]] = ids[pairs[2 * i + 1]];
}

extern "C" __global__ void add_bf16(act_t* __restrict__ x, const act_t* __restrict__ y, u64 n) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if ((n & 7) == 0) {
        for (; i < n / 8; i += stride) {
            float a[8], b[8];
            act8_to_f32(((const act8*)x)[i], a);
            act8_to_f32(((const act8*)y)[i], b);
#pragma unroll
            for (int e = 0; e < 8; e++) a[e] += b[e];
            ((act8*)x)[i] = f32_to_act8(a);
        }
    } else {
        for (; i < n; i += stride)
            x[i] = f2act(act2f(x[i]) + act2f(y[i]));
    }
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

// The gated-MLP activation loops, for any activation `Act` (a functor float -> float: SiLU
// here, GELU in gelu.cu). f32 math, act_t in and out, 16-byte accesses when the length allows.

// out[i] = act(a[i]) * (b ? b[i] : 1) for i < n.
template <class Act>
__device__ __forceinline__ void act_mul_impl(act_t* __restrict__ out, const act_t* __restrict__ a,
                                             const act_t* __restrict__ b, u64 n, Act act) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if ((n & 7) == 0) {
        for (; i < n / 8; i += stride) {
            float g[8], u[8];
            act8_to_f32(((const act8*)a)[i], g);
            if (b) {
                act8_to_f32(((const act8*)b)[i], u);
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++) u[e] = 1.f;
            }
#pragma unroll
            for (int e = 0; e < 8; e++) g[e] = act(g[e]) * u[e];
            ((act8*)out)[i] = f32_to_act8(g);
        }
    } else {
        for (; i < n; i += stride) out[i] = f2act(act(act2f(a[i])) * (b ? act2f(b[i]) : 1.f));
    }
}

// out [T, f] = act(gu[:, :f]) * gu[:, f:] for a fused gate/up projection gu [T, 2f].
template <class Act>
__device__ __forceinline__ void act_mul_fused_impl(act_t* __restrict__ out,
                                                   const act_t* __restrict__ gu, u64 rows, u64 f,
                                                   Act act) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if ((f & 7) == 0) {
        const u64 per_row = f / 8;
        for (; i < rows * per_row; i += stride) {
            const u64 r = i / per_row, c = i % per_row;
            float g[8], u[8];
            act8_to_f32(((const act8*)(gu + r * 2 * f))[c], g);
            act8_to_f32(((const act8*)(gu + r * 2 * f + f))[c], u);
#pragma unroll
            for (int e = 0; e < 8; e++) g[e] = act(g[e]) * u[e];
            ((act8*)(out + r * f))[c] = f32_to_act8(g);
        }
    } else {
        for (; i < rows * f; i += stride) {
            const u64 r = i / f, c = i % f;
            out[i] = f2act(act(act2f(gu[r * 2 * f + c])) * act2f(gu[r * 2 * f + f + c]));
        }
    }
}

struct SiluAct {
    __device__ __forceinline__ float operator()(float x) const { return silu(x); }
};

extern "C" __global__ void silu_mul_bf16(act_t* __restrict__ out, const act_t* __restrict__ gate,
                                         const act_t* __restrict__ up, u64 n) {
    act_mul_impl(out, gate, up, n, SiluAct{});
}

// ---------------------------------------------------------------- rope + cache write
// grid (T, S), block 256, dynamic shared memory rotary_dim floats: S CTAs per token (S > 1 for
// small steps), each with every S-th head, one thread per rotated pair. Heads [0, heads) are query heads: rotated from q_src into q_dst (q_dst row
// stride heads * hd; may alias q_src). The next kv_heads are key heads: rotated, written to the
// cache at slot_mapping[t] (0xffffffff = a padding row, not written) and, if k_dst is not null,
// back to k_dst (row stride kv_heads * hd). The last kv_heads are value heads: copied to the
// cache. Source rows have strides q_stride / k_stride / v_stride (a fused QKV projection's rows
// hold q, k and v side by side).
extern "C" __global__ void rope_cache(const act_t* q_src, act_t* q_dst, const act_t* k_src,
                                      act_t* k_dst, const act_t* __restrict__ v_src, u64 q_stride,
                                      u64 k_stride, u64 v_stride, const u32* __restrict__ positions,
                                      const u32* __restrict__ slot_mapping,
                                      act_t* __restrict__ k_cache, act_t* __restrict__ v_cache,
                                      int heads, int kv_heads, int hd, int rotary_dim, int neox,
                                      float log2_theta, u64 num_slots,
                                      const act_t* __restrict__ norm_x, int norm_cols, float eps) {
    // One block per token: the token's cos/sin table (rotary_dim / 2 angles) is computed once
    // into shared memory and serves all its query and key heads (per-head sincosf made this
    // kernel compute-bound: 122 us for a 4096-token step of the 8B model).
    extern __shared__ float cs[];  // [half] cos, then [half] sin
    const u64 t = blockIdx.x;
    const u32 slot = slot_mapping[t];
    const bool write = slot != 0xffffffffu && (u64)slot < num_slots;
    const int half = rotary_dim / 2;
    rope_table(cs, (float)positions[t], half, rotary_dim, log2_theta);
    // norm_x (folded norms): q, k and v are projections of the un-normed residual row, scaled
    // here by its 1 / rms.
    __shared__ float red[32];
    const float sc = norm_x ? row_rstd(norm_x + t * norm_cols, norm_cols, eps, red) : 1.f;
    // Rotated pairs of the query and key heads of this block's share (head % gridDim.y ==
    // blockIdx.y: small steps spread a token's heads over several blocks).
    const int qk_heads = heads + kv_heads;
    const int hs = gridDim.y, h0 = blockIdx.y;
    const int my_heads = (qk_heads - h0 + hs - 1) / hs;
    for (int p = threadIdx.x; p < my_heads * half; p += blockDim.x) {
        const int head = h0 + (p / half) * hs, i = p % half;
        const RopeHead r = rope_head(head, t, q_src, q_dst, k_src, k_dst, q_stride, k_stride,
                                     k_cache, write, slot, heads, kv_heads, hd);
        const act_t* src = r.src;
        act_t* dst = r.dst;
        act_t* kc = r.kc;
        const float c = cs[i], s = cs[half + i];
        const int a = neox ? i : 2 * i;
        const int b = neox ? i + half : 2 * i + 1;
        const float x0 = act2f(src[a]) * sc, x1 = act2f(src[b]) * sc;
        const act_t y0 = f2act(x0 * c - x1 * s);
        const act_t y1 = f2act(x0 * s + x1 * c);
        // Every read of this thread's pair happens before its writes (dst may alias src).
        if (dst) {
            dst[a] = y0;
            dst[b] = y1;
        }
        if (kc) {
            kc[a] = y0;
            kc[b] = y1;
        }
    }
    // Dimensions past rotary_dim pass through unrotated.
    const int rest = hd - rotary_dim;
    for (int p = threadIdx.x; p < my_heads * rest; p += blockDim.x) {
        const int head = h0 + (p / rest) * hs, d = rotary_dim + p % rest;
        const RopeHead r = rope_head(head, t, q_src, q_dst, k_src, k_dst, q_stride, k_stride,
                                     k_cache, write, slot, heads, kv_heads, hd);
        const act_t* src = r.src;
        act_t* dst = r.dst;
        act_t* kc = r.kc;
        const act_t x = f2act(act2f(src[d]) * sc);  // exact when sc == 1
        if (dst) dst[d] = x;
        if (kc) kc[d] = x;
    }
    // Values: copied into the cache.
    if (!write) return;
    const int my_v = (kv_heads - h0 + hs - 1) / hs;
    for (int e = threadIdx.x; e < my_v * hd; e += blockDim.x) {
        const int h = h0 + (e / hd) * hs, d = e % hd;
        v_cache[(u64)slot * kv_heads * hd + (u64)h * hd + d] =
            f2act(act2f(v_src[t * v_stride + (u64)h * hd + d]) * sc);
    }
}

// v * sc, 8 values (exact when sc == 1: a round trip through f32).
__device__ __forceinline__ act8 scale_act8(act8 v, float sc) {
    float f[8];
    act8_to_f32(v, f);
#pragma unroll
    for (int e = 0; e < 8; e++) f[e] *= sc;
    return f32_to_act8(f);
}

// rope_cache with 16-byte accesses: a thread rotates 8 pairs (neox: 8 consecutive angles, one
// 16-byte chunk of each half; interleaved: one chunk holding 4 pairs) and copies values 8 at a
// time. The scalar kernel moved 2 bytes per access (88 us for a 4096-token step of the 8B model,
// ~1.1 TB/s). Same arguments and results; needs hd, rotary_dim / 2 (neox) or rotary_dim, the
// unrotated rest and every row stride to be multiples of 8 elements, and 16-byte aligned rows.
extern "C" __global__ void rope_cache_v8(const act_t* q_src, act_t* q_dst, const act_t* k_src,
                                         act_t* k_dst, const act_t* __restrict__ v_src,
                                         u64 q_stride, u64 k_stride, u64 v_stride,
                                         const u32* __restrict__ positions,
                                         const u32* __restrict__ slot_mapping,
                                         act_t* __restrict__ k_cache, act_t* __restrict__ v_cache,
                                         int heads, int kv_heads, int hd, int rotary_dim, int neox,
                                         float log2_theta, u64 num_slots,
                                         const act_t* __restrict__ norm_x, int norm_cols,
                                         float eps) {
    extern __shared__ float cs[];  // [half] cos, then [half] sin
    const u64 t = blockIdx.x;
    const u32 slot = slot_mapping[t];
    const bool write = slot != 0xffffffffu && (u64)slot < num_slots;
    const int half = rotary_dim / 2;
    rope_table(cs, (float)positions[t], half, rotary_dim, log2_theta);
    __shared__ float red[32];
    const float sc = norm_x ? row_rstd(norm_x + t * norm_cols, norm_cols, eps, red) : 1.f;
    const int qk_heads = heads + kv_heads;
    const int hs = gridDim.y, h0 = blockIdx.y;
    const int my_heads = (qk_heads - h0 + hs - 1) / hs;
    const int nrot = (neox ? half : rotary_dim) / 8;  // rotation items per head
    const int per_head = nrot + (hd - rotary_dim) / 8;
    for (int p = threadIdx.x; p < my_heads * per_head; p += blockDim.x) {
        const int hh = p / per_head, j = p - hh * per_head;
        const int head = h0 + hh * hs;
        const RopeHead r = rope_head(head, t, q_src, q_dst, k_src, k_dst, q_stride, k_stride,
                                     k_cache, write, slot, heads, kv_heads, hd);
        const act_t* src = r.src;
        act_t* dst = r.dst;
        act_t* kc = r.kc;
        if (j >= nrot) {
            // Dimensions past rotary_dim pass through unrotated.
            const int d = rotary_dim + 8 * (j - nrot);
            const act8 v = scale_act8(*(const act8*)(src + d), sc);
            if (dst) *(act8*)(dst + d) = v;
            if (kc) *(act8*)(kc + d) = v;
            continue;
        }
        if (neox) {
            // Angles 8j..8j+7: elements a.. of the first half pair with b.. of the second.
            const int a = 8 * j, b = half + 8 * j;
            float x0[8], x1[8], y0[8], y1[8];
            act8_to_f32(*(const act8*)(src + a), x0);
            act8_to_f32(*(const act8*)(src + b), x1);
#pragma unroll
            for (int e = 0; e < 8; e++) {
                x0[e] *= sc;
                x1[e] *= sc;
                const float c = cs[a + e], s = cs[half + a + e];
                y0[e] = x0[e] * c - x1[e] * s;
                y1[e] = x0[e] * s + x1[e] * c;
            }
            const act8 v0 = f32_to_act8(y0), v1 = f32_to_act8(y1);
            if (dst) {
                *(act8*)(dst + a) = v0;
                *(act8*)(dst + b) = v1;
            }
            if (kc) {
                *(act8*)(kc + a) = v0;
                *(act8*)(kc + b) = v1;
            }
        } else {
            // Elements 8j..8j+7 hold the pairs of angles 4j..4j+3.
            const int a = 8 * j;
            float x[8], y[8];
            act8_to_f32(*(const act8*)(src + a), x);
#pragma unroll
            for (int e = 0; e < 8; e++) x[e] *= sc;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float c = cs[4 * j + e], s = cs[half + 4 * j + e];
                y[2 * e] = x[2 * e] * c - x[2 * e + 1] * s;
                y[2 * e + 1] = x[2 * e] * s + x[2 * e + 1] * c;
            }
            const act8 v = f32_to_act8(y);
            if (dst) *(act8*)(dst + a) = v;
            if (kc) *(act8*)(kc + a) = v;
        }
    }
    // Values: copied into the cache, 8 at a time.
    if (!write) return;
    const int my_v = (kv_heads - h0 + hs - 1) / hs;
    const int vchunks = hd / 8;
    for (int e = threadIdx.x; e < my_v * vchunks; e += blockDim.x) {
        const int hh = e / vchunks, c = e - hh * vchunks;
        const int h = h0 + hh * hs;
        *(act8*)(v_cache + (u64)slot * kv_heads * hd + (u64)h * hd + 8 * c) =
            scale_act8(*(const act8*)(v_src + t * v_stride + (u64)h * hd + 8 * c), sc);
    }
}

// out [T, f] = silu(gu[:, :f]) * gu[:, f:] for a fused gate/up projection gu [T, 2f].
extern "C" __global__ void silu_mul_fused_bf16(act_t* __restrict__ out, const act_t* __restrict__ gu,
                                               u64 rows, u64 f) {
    act_mul_fused_impl(out, gu, rows, f, SiluAct{});
}

// silu_mul_fused of a gate/up projection of the un-normed residual stream (folded norms): both
// halves of row r are scaled by 1 / rms(x[r]) first. grid (rows, chunks): each block computes
// its row's scale, then takes every chunks-th 8-element group of the row.
extern "C" __global__ void silu_mul_fused_rms_bf16(act_t* __restrict__ out,
                                                   const act_t* __restrict__ gu, u64 f,
                                                   const act_t* __restrict__ x, int xcols,
                                                   float eps) {
    __shared__ float red[32];
    const u64 r = blockIdx.x;
    const float sc = row_rstd(x + r * xcols, xcols, eps, red);
    const act_t* g = gu + r * 2 * f;
    const act_t* u = g + f;
    act_t* o = out + r * f;
    const u64 stride = (u64)gridDim.y * blockDim.x;
    u64 i = (u64)blockIdx.y * blockDim.x + threadIdx.x;
    if ((f & 7) == 0) {
        for (; i < f / 8; i += stride) {
            float a[8], b[8];
            act8_to_f32(((const act8*)g)[i], a);
            act8_to_f32(((const act8*)u)[i], b);
#pragma unroll
            for (int e = 0; e < 8; e++) a[e] = silu(a[e] * sc) * (b[e] * sc);
            ((act8*)o)[i] = f32_to_act8(a);
        }
    } else {
        for (; i < f; i += stride) o[i] = f2act(silu(act2f(g[i]) * sc) * (act2f(u[i]) * sc));
    }
}

// Index of the largest value of each row (ties: the lowest index), for greedy sampling without
// copying logits to the host. One block of 1024 threads per row, 16-byte loads when possible.
__device__ __forceinline__ void argmax_take(float v, int c, float& best, int& idx) {
    if (v > best || (v == best && c < idx)) {
        best = v;
        idx = c;
    }
}

// Reduces every thread's (best, idx) over the block (warp shuffles, then one warp over the
// per-warp winners) and stores the winning index (0 when no value beat -inf) at *out.
__device__ __forceinline__ void block_argmax_store(float best, int idx, u32* out) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        argmax_take(ov, oi, best, idx);
    }
    __shared__ float sv[32];
    __shared__ int si[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = idx;
    }
    __syncthreads();
    if (warp == 0) {
        best = lane < nw ? sv[lane] : -RV_INF;
        idx = lane < nw ? si[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, best, o);
            const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
            argmax_take(ov, oi, best, idx);
        }
        if (lane == 0) *out = (u32)(idx == 0x7fffffff ? 0 : idx);
    }
}

extern "C" __global__ void argmax_rows_bf16(u32* __restrict__ out, const act_t* __restrict__ x, int cols) {
    const act_t* row = x + (u64)blockIdx.x * cols;
    float best = -RV_INF;
    int idx = 0x7fffffff;
    if ((cols & 7) == 0) {
        for (int c8 = threadIdx.x; c8 < cols / 8; c8 += blockDim.x) {
            float f[8];
            act8_to_f32(((const act8*)row)[c8], f);
#pragma unroll
            for (int e = 0; e < 8; e++) argmax_take(f[e], c8 * 8 + e, best, idx);
        }
    } else {
        for (int c = threadIdx.x; c < cols; c += blockDim.x)
            argmax_take(act2f(row[c]), c, best, idx);
    }
    // Warp, then block reduction of (value, index).
    block_argmax_store(best, idx, out + blockIdx.x);
}

// ---------------------------------------------------------------- device sampling
// Per row r: inv_temp[r] == 0 -> the argmax (ties: lowest index); else a sample of
// softmax(x[r] * inv_temp[r]) by the Gumbel-max trick: argmax_c(x*inv_temp + G_c) with
// G_c = -log(-log(u_c)) and u_c a SplitMix64 hash of (seeds[r], c), so the draw is a pure function
// of the row seed (reproducible under any batching). The CPU backend implements the same formula.
__device__ __forceinline__ u64 splitmix64(u64 z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ float gumbel(u64 seed, u64 c) {
    const u64 h = splitmix64(seed ^ (c * 0xD1B54A32D192ED03ull));
    const float u = ((float)(h >> 40) + 0.5f) * (1.0f / 16777216.0f);  // (0, 1)
    return -logf(-logf(u));
}

// Order-preserving 16-bit key of an act_t value (larger value -> larger key): bf16 and f16 are
// both sign-magnitude, so flipping works for either.
__device__ __forceinline__ u32 act_key(act_t v) {
    const u32 b = (u32)act_bits(v);
    return (b & 0x8000u) ? (~b & 0xffffu) : (b | 0x8000u);
}

// The largest key K with sum over {c : pred(c), key_c >= K} of weight_c >= target, by two 8-bit
// radix passes over the row (weights as 40-bit fixed point, so the result is deterministic).
// `hist` holds 256 u64; every thread of the block must call it.
template <typename Pred, typename Weight>
__device__ u32 radix_threshold(const act_t* row, int cols, Pred pred, Weight weight, u64 target,
                               u64* hist, u32* s_out) {
    u32 hi = 0;
    u64 above = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            const act_t v = row[c];
            const u32 k = act_key(v);
            if (!pred(c, v, k)) continue;
            if (pass == 1 && (k >> 8) != hi) continue;
            atomicAdd(&hist[pass == 0 ? (k >> 8) : (k & 255u)], weight(v));
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            u64 cum = pass == 0 ? 0 : above;
            u32 digit = 0;
            for (int b = 255; b >= 0; b--) {
                if (cum + hist[b] >= target) {
                    digit = (u32)b;
                    break;
                }
                cum += hist[b];
            }
            if (pass == 0) {
                s_out[0] = digit;
                // Mass strictly above the chosen high byte.
                u64 a = 0;
                for (int b = 255; b > (int)digit; b--) a += hist[b];
                s_out[1] = (u32)(a & 0xffffffffu);
                s_out[2] = (u32)(a >> 32);
            } else {
                s_out[3] = (hi << 8) | digit;
            }
        }
        __syncthreads();
        if (pass == 0) {
            hi = s_out[0];
            above = (u64)s_out[1] | ((u64)s_out[2] << 32);
        }
        __syncthreads();
    }
    return s_out[3];
}

// Per row r, params rp[4r..4r+4] = (1/temperature, top_p, min_p, top_k): 1/temperature == 0 ->
// the argmax (ties: lowest index). Otherwise a sample of softmax(x * inv_temp) restricted as the
// host sampler restricts it: top-k (the k largest logits, ties kept; 0 = off), then min-p (p >=
// min_p * p_max) and top-p (the smallest top set holding >= top_p of the remaining mass, ties
// kept), drawn by the Gumbel-max trick: argmax_c(x*inv_temp + G_c) over the kept tokens with
// G_c = -log(-log(u_c)) and u_c a SplitMix64 hash of (seeds[r], c), so the draw is a pure
// function of the row seed. The host reference `sample_rows_host` uses the same formulas.
extern "C" __global__ void sample_rows_bf16(u32* __restrict__ out, const act_t* __restrict__ x, int cols,
                                            const float* __restrict__ rp,
                                            const u64* __restrict__ seeds) {
    const act_t* row = x + (u64)blockIdx.x * cols;
    const float it = rp[4 * blockIdx.x];
    const float top_p = rp[4 * blockIdx.x + 1];
    const float min_p = rp[4 * blockIdx.x + 2];
    const int top_k = (int)rp[4 * blockIdx.x + 3];
    const u64 seed = seeds[blockIdx.x];
    __shared__ u64 hist[256];
    __shared__ u32 s_out[4];
    __shared__ float red[32];

    // Keys below `kmin` and values below `vmin` are out.
    u32 kmin = 0;
    float vmin = -RV_INF;
    const bool sampled = it != 0.f;
    const bool use_k = sampled && top_k > 0 && top_k < cols;
    const bool use_minp = sampled && min_p > 0.f;
    const bool use_p = sampled && top_p < 1.f;
    float m = 0.f;
    if (use_minp || use_p) {
        float lm = -RV_INF;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) lm = fmaxf(lm, act2f(row[c]));
        m = block_max(lm, red);
    }
    if (use_k) {
        kmin = radix_threshold(
            row, cols, [](int, act_t, u32) { return true; }, [](act_t) { return (u64)1; },
            (u64)top_k, hist, s_out);
    }
    if (use_minp) vmin = m + logf(min_p) / it;
    if (use_p) {
        const u32 k0 = kmin;
        const float v0 = vmin;
        auto elig = [=](int, act_t v, u32 k) { return k >= k0 && act2f(v) >= v0; };
        auto mass = [=](act_t v) {
            const float w = __expf((act2f(v) - m) * it);  // in (0, 1]
            return (u64)(w * 1099511627776.0f);                     // 2^40
        };
        // Total eligible mass, then the nucleus threshold.
        u64 local = 0;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            const act_t v = row[c];
            if (elig(c, v, act_key(v))) local += mass(v);
        }
        for (int o = 16; o > 0; o >>= 1) local += __shfl_xor_sync(0xffffffffu, local, o);
        if (threadIdx.x == 0) hist[0] = 0;
        __syncthreads();
        if ((threadIdx.x & 31) == 0) atomicAdd(&hist[0], local);
        __syncthreads();
        const u64 total = hist[0];
        __syncthreads();
        const u64 target = (u64)((double)total * (double)top_p);
        const u32 kp = radix_threshold(row, cols, elig, mass, target > 0 ? target : 1, hist, s_out);
        kmin = kmin > kp ? kmin : kp;
    }

    float best = -RV_INF;
    int idx = 0x7fffffff;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const act_t b = row[c];
        float v = act2f(b);
        if (sampled) {
            if (act_key(b) < kmin || v < vmin) continue;
            v = v * it + gumbel(seed, (u64)c);
        }
        argmax_take(v, c, best, idx);
    }
    block_argmax_store(best, idx, out + blockIdx.x);
}
