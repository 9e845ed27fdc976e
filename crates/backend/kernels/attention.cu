// Paged attention over the cache layout [num_blocks, block_size, kv_heads, head_dim] (act_t).
//
// Decode path (sequences with query_len == 1): one CTA per (sequence, KV head, head chunk,
// context partition) handles all G query heads that share the KV head, so K/V are read once.
// Long contexts are split into partitions (flash-decoding); a reduce kernel merges them.
//
// General path (prefill / chunked prefill, any query_len): tiled flash attention with an online
// softmax, f32 FMA math. Rows of a tile are (query token, head-in-group) pairs so K/V tiles are
// shared by the whole GQA group.

#define DECODE_NT 128
#define DECODE_NW 4
#define DECODE_U 4

template <int HD, int G>
__device__ __forceinline__ void decode_attn_impl(
    act_t* __restrict__ out, float* __restrict__ tmp_out, float* __restrict__ max_logits,
    float* __restrict__ exp_sums, const act_t* __restrict__ q, const act_t* __restrict__ k_cache,
    const act_t* __restrict__ v_cache, const u32* __restrict__ block_tables,
    const u32* __restrict__ query_start, const u32* __restrict__ query_len,
    const u32* __restrict__ context_len, int max_blocks, int num_heads, int num_kv_heads,
    int block_size, float scale, int part_size, int hchunks) {
    constexpr int NT = DECODE_NT, NW = DECODE_NW, U = DECODE_U;
    constexpr int TPT = HD / 8;    // threads per token row, 16 bytes each
    constexpr int TPW = 32 / TPT;  // tokens per warp step
    constexpr int NR = NT / TPT;   // token rows in flight in the V phase
    extern __shared__ float smem[];  // [G][part_size] logits, then [NR][G][HD] partial outputs
    __shared__ float s_max[G], s_sum[G];

    const int s = blockIdx.x;
    if (query_len[s] != 1) return;
    const int kvh = blockIdx.y / hchunks, chunk = blockIdx.y % hchunks;
    const int group = num_heads / num_kv_heads;
    const int head0 = kvh * group + chunk * G;
    const int ctx = (int)context_len[s];
    const int start = blockIdx.z * part_size;
    if (start >= ctx) return;
    const int n = min(start + part_size, ctx) - start;
    const int num_parts = (ctx + part_size - 1) / part_size;
    const int max_parts = gridDim.z;
    const u64 tok = query_start[s];
    const u32* bt = block_tables + (u64)s * max_blocks;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int tl = lane % TPT;
    const u64 tok_stride = (u64)num_kv_heads * HD;
    const act_t* kbase = k_cache + (u64)kvh * HD + tl * 8;
    const act_t* vbase = v_cache + (u64)kvh * HD + tl * 8;

    float qv[G][8];
#pragma unroll
    for (int g = 0; g < G; g++) {
        act8 t = *(const act8*)(q + tok * num_heads * HD + (u64)(head0 + g) * HD + tl * 8);
        act8_to_f32(t, qv[g]);
#pragma unroll
        for (int e = 0; e < 8; e++) qv[g][e] *= scale;
    }

    // ---- phase 1: scores into shared memory (warp-uniform loop: shuffles below are safe)
    float* logits = smem;
    for (int base = warp * TPW; base < n; base += NW * TPW * U) {
        act8 kv[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int j = base + u * NW * TPW + lane / TPT;
            if (j < n) {
                const int pos = start + j;
                const u64 blk = bt[pos / block_size];
                kv[u] = *(const act8*)(kbase + (blk * block_size + pos % block_size) * tok_stride);
            } else {
                kv[u] = act8{};
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int j = base + u * NW * TPW + lane / TPT;
            float kf[8];
            act8_to_f32(kv[u], kf);
#pragma unroll
            for (int g = 0; g < G; g++) {
                float d = 0.f;
#pragma unroll
                for (int e = 0; e < 8; e++) d += qv[g][e] * kf[e];
#pragma unroll
                for (int o = TPT / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
                if (tl == 0 && j < n) logits[g * part_size + j] = d;
            }
        }
    }
    __syncthreads();

    // ---- softmax statistics: one warp per head
    for (int g = warp; g < G; g += NW) {
        float m = -RV_INF;
        for (int j = lane; j < n; j += 32) m = fmaxf(m, logits[g * part_size + j]);
        m = warp_max(m);
        float sum = 0.f;
        for (int j = lane; j < n; j += 32) {
            const float p = __expf(logits[g * part_size + j] - m);
            logits[g * part_size + j] = p;
            sum += p;
        }
        sum = warp_sum(sum);
        if (lane == 0) {
            s_max[g] = m;
            s_sum[g] = sum;
        }
    }
    __syncthreads();

    // ---- phase 2: P·V
    const int vr = tid / TPT;
    float acc[G][8];
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int e = 0; e < 8; e++) acc[g][e] = 0.f;
    for (int j0 = vr; j0 < n; j0 += NR * U) {
        act8 vv[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int j = j0 + u * NR;
            if (j < n) {
                const int pos = start + j;
                const u64 blk = bt[pos / block_size];
                vv[u] = *(const act8*)(vbase + (blk * block_size + pos % block_size) * tok_stride);
            } else {
                vv[u] = act8{};
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int j = j0 + u * NR;
            if (j < n) {
                float vf[8];
                act8_to_f32(vv[u], vf);
#pragma unroll
                for (int g = 0; g < G; g++) {
                    const float p = logits[g * part_size + j];
#pragma unroll
                    for (int e = 0; e < 8; e++) acc[g][e] += p * vf[e];
                }
            }
        }
    }
    __syncthreads();
    float* red = smem;  // [NR][G][HD]
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int e = 0; e < 8; e++) red[(vr * G + g) * HD + tl * 8 + e] = acc[g][e];
    __syncthreads();
    for (int i = tid; i < G * HD; i += NT) {
        const int g = i / HD, d = i % HD;
        float o = 0.f;
#pragma unroll
        for (int r = 0; r < NR; r++) o += red[(r * G + g) * HD + d];
        o /= s_sum[g];
        if (num_parts == 1) {
            out[tok * num_heads * HD + (u64)(head0 + g) * HD + d] = f2act(o);
        } else {
            tmp_out[(((u64)s * num_heads + head0 + g) * max_parts + blockIdx.z) * HD + d] = o;
        }
    }
    if (num_parts > 1 && tid < G) {
        const u64 idx = ((u64)s * num_heads + head0 + tid) * max_parts + blockIdx.z;
        max_logits[idx] = s_max[tid];
        exp_sums[idx] = s_sum[tid];
    }
}

#define DECODE_ARGS                                                                              \
    act_t *out, float *tmp_out, float *max_logits, float *exp_sums, const act_t *q,                \
        const act_t *k_cache, const act_t *v_cache, const u32 *block_tables,                       \
        const u32 *query_start, const u32 *query_len, const u32 *context_len, int max_blocks,    \
        int num_heads, int num_kv_heads, int block_size, float scale, int part_size, int hchunks
#define DECODE_PASS                                                                              \
    out, tmp_out, max_logits, exp_sums, q, k_cache, v_cache, block_tables, query_start,          \
        query_len, context_len, max_blocks, num_heads, num_kv_heads, block_size, scale,          \
        part_size, hchunks
#define DECODE_KERNEL(HD, G)                                                                     \
    extern "C" __global__ void __launch_bounds__(DECODE_NT)                                      \
        paged_decode_h##HD##_g##G(DECODE_ARGS) {                                                 \
        pdl_trigger();                                                                           \
        decode_attn_impl<HD, G>(DECODE_PASS);                                                    \
    }
#define DECODE_ALL_G(HD)                                                                         \
    DECODE_KERNEL(HD, 1)                                                                         \
    DECODE_KERNEL(HD, 2)                                                                         \
    DECODE_KERNEL(HD, 3)                                                                         \
    DECODE_KERNEL(HD, 4)                                                                         \
    DECODE_KERNEL(HD, 5)                                                                         \
    DECODE_KERNEL(HD, 6)                                                                         \
    DECODE_KERNEL(HD, 7)                                                                         \
    DECODE_KERNEL(HD, 8)

// Merges the partitions of each (decode sequence, head). grid (num_seqs, num_heads).
extern "C" __global__ void paged_decode_reduce(act_t* __restrict__ out, const float* __restrict__ tmp_out,
                                               const float* __restrict__ max_logits,
                                               const float* __restrict__ exp_sums,
                                               const u32* __restrict__ query_start,
                                               const u32* __restrict__ query_len,
                                               const u32* __restrict__ context_len, int num_heads,
                                               int hd, int part_size, int max_parts) {
    extern __shared__ float w[];  // [max_parts]
    __shared__ float red[32];
    pdl_trigger();
    const int s = blockIdx.x, h = blockIdx.y;
    if (query_len[s] != 1) return;
    const int ctx = (int)context_len[s];
    const int np = (ctx + part_size - 1) / part_size;
    if (np <= 1) return;
    const u64 base = ((u64)s * num_heads + h) * max_parts;
    float m = -RV_INF;
    for (int p = threadIdx.x; p < np; p += blockDim.x) m = fmaxf(m, max_logits[base + p]);
    m = block_max(m, red);
    float tot = 0.f;
    for (int p = threadIdx.x; p < np; p += blockDim.x) {
        const float wp = exp_sums[base + p] * __expf(max_logits[base + p] - m);
        w[p] = wp;
        tot += wp;
    }
    tot = block_sum(tot, red);  // has __syncthreads: w[] is visible after it
    const float inv = 1.f / tot;
    const u64 tok = query_start[s];
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.f;
        for (int p = 0; p < np; p++) o += w[p] * tmp_out[(base + p) * hd + d];
        out[tok * num_heads * hd + (u64)h * hd + d] = f2act(o * inv);
    }
}

// ---------------------------------------------------------------- decode, single pass (v2)
// CTA = (KV head chunk of G query heads, sequence, context partition): blockIdx.x is the head
// chunk so the CTAs of one sequence run together and read neighbouring 256-byte K/V rows.
// Each warp streams whole token groups: per iteration every thread issues L 16-byte K loads
// and L 16-byte V loads at once (block numbers from a shared-memory copy of the partition's
// block table), then updates an online softmax (base-2 exponent) for its G heads. Warps merge
// through shared memory; with several partitions the last CTA of a (sequence, head chunk) to
// finish (atomic counter, reset by it) merges the partitions, so there is no reduce launch.
#define DEC2_NT 128
#define DEC2_NW 4

__device__ __forceinline__ float rv_ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// What the fused rope variant needs (ROPE only): the step's new token is not in the cache yet;
// q, k and v come unrotated from the Q/K/V projection (row stride `qkv_stride`), scaled by the
// token's 1 / rms of `norm_x` (when set: the attention norm folded into the weight), rotated
// (full width) and rounded as the rope kernel does. The CTA of head chunk 0 whose partition
// ends at the new token writes its k and v to the cache; every CTA of that partition takes the
// new token from registers, so no CTA reads a cache row written during the launch.
struct DecodeRope {
    const act_t* norm_x;
    int norm_cols;
    float eps;
    const u32* positions;
    const u32* slot_mapping;
    act_t* k_cache;
    act_t* v_cache;
    u64 num_slots;
    u64 qkv_stride;
    float log2_theta;
    int neox;
};

// NWT: warps per CTA, all on the same item (they split its tokens and merge at the end).
// ROPE: the step's rope and KV-cache write are folded in (see DecodeRope).
template <int HD, int G, int L, int NWT, bool ROPE>
__device__ __forceinline__ void decode2_impl(
    act_t* __restrict__ out, float* __restrict__ tmp_out, float* __restrict__ max_logits,
    float* __restrict__ exp_sums, u32* __restrict__ counters, const act_t* __restrict__ q,
    const act_t* __restrict__ k_cache, const act_t* __restrict__ v_cache,
    const u32* __restrict__ block_tables, const u32* __restrict__ query_start,
    const u32* __restrict__ query_len, const u32* __restrict__ context_len, int max_blocks,
    int num_heads, int num_kv_heads, int block_size, int bs_shift, float scale, int part_size,
    int hchunks, const DecodeRope rp) {
    constexpr int NT = 32 * NWT, NW = NWT;
    constexpr int TPT = HD / 8;         // threads per token row, 16 bytes each
    constexpr int TPW = 32 / TPT;       // token rows per warp load
    // L: K (and V) loads per thread per iteration
    constexpr int TOK = L * TPW;        // tokens per warp iteration
    // [NW][G][HD] partial outputs, [NW][G] maxima, [NW][G] sums, then the block numbers.
    extern __shared__ __align__(16) float dsm[];
    float* s_acc = dsm;
    float* s_m = s_acc + NW * G * HD;
    float* s_l = s_m + NW * G;
    u32* s_bt = (u32*)(s_l + NW * G);
    __shared__ int s_last;

    const int s = blockIdx.y;
    if (query_len[s] != 1) return;
    const int kvh = blockIdx.x / hchunks, chunk = blockIdx.x % hchunks;
    const int group = num_heads / num_kv_heads;
    const int head0 = kvh * group + chunk * G;
    const int ctx = (int)context_len[s];
    const int start = blockIdx.z * part_size;
    if (start >= ctx) return;
    const int n = min(start + part_size, ctx) - start;
    const int num_parts = (ctx + part_size - 1) / part_size;
    const int max_parts = gridDim.z;
    const u64 tok = query_start[s];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int tl = lane % TPT, row = lane / TPT;
    const u64 tok_stride = (u64)num_kv_heads * HD;
    const act_t* kbase = k_cache + (u64)kvh * HD + tl * 8;
    const act_t* vbase = v_cache + (u64)kvh * HD + tl * 8;

    const int fb = start / block_size;
    const int nbt = (start + n - 1) / block_size - fb + 1;
    const u32* bt = block_tables + (u64)s * max_blocks + fb;
    for (int i = tid; i < nbt; i += NT) s_bt[i] = bt[i];

    constexpr float LOG2E = 1.4426950408889634f;
    float qv[G][8];
    // Tokens the loop reads from the cache (with ROPE, the partition's last token is the new
    // one, taken from registers).
    int n_loop = n;
    float cur_k[8], cur_v[8];
    bool has_cur = false;
    if (ROPE) {
        __shared__ float red[32];
        const float sc = rp.norm_x ? row_rstd(rp.norm_x + tok * rp.norm_cols, rp.norm_cols, rp.eps, red)
                                   : 1.f;
        const float pos = (float)rp.positions[tok];
        float cs[8], sn[8];
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const int d = tl * 8 + e;
            rope_sincos(pos, rp.neox ? d % (HD / 2) : d / 2, HD, rp.log2_theta, &sn[e], &cs[e]);
        }
        const act_t* row_base = q + tok * rp.qkv_stride;
        // This thread's 8 dims of a head row: scaled, rotated (neox pairs dim d with d +- HD/2,
        // held by the lane TPT/2 away; interleaved pairs 2j, 2j+1 within the thread), rounded.
        auto rotate = [&](const act_t* src, float* y) {
            float x[8];
            act8_to_f32(*(const act8*)(src + tl * 8), x);
#pragma unroll
            for (int e = 0; e < 8; e++) x[e] *= sc;
            if (rp.neox) {
                const bool lo = tl < TPT / 2;
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    const float o = __shfl_xor_sync(0xffffffffu, x[e], TPT / 2);
                    y[e] = lo ? x[e] * cs[e] - o * sn[e] : o * sn[e] + x[e] * cs[e];
                }
            } else {
#pragma unroll
                for (int e = 0; e < 8; e += 2) {
                    y[e] = x[e] * cs[e] - x[e + 1] * sn[e];
                    y[e + 1] = x[e] * sn[e] + x[e + 1] * cs[e];
                }
            }
#pragma unroll
            for (int e = 0; e < 8; e++) y[e] = act2f(f2act(y[e]));
        };
#pragma unroll
        for (int g = 0; g < G; g++) {
            rotate(row_base + (u64)(head0 + g) * HD, qv[g]);
#pragma unroll
            for (int e = 0; e < 8; e++) qv[g][e] *= scale * LOG2E;
        }
        has_cur = start + n == ctx;
        if (has_cur) {
            n_loop = n - 1;
            rotate(row_base + (u64)(num_heads + kvh) * HD, cur_k);
            float v8[8];
            act8_to_f32(*(const act8*)(row_base + (u64)(num_heads + num_kv_heads + kvh) * HD + tl * 8), v8);
#pragma unroll
            for (int e = 0; e < 8; e++) cur_v[e] = act2f(f2act(v8[e] * sc));
            const u32 slot = rp.slot_mapping[tok];
            if (chunk == 0 && warp == 0 && row == 0 && slot != 0xffffffffu && (u64)slot < rp.num_slots) {
                const u64 o = ((u64)slot * num_kv_heads + kvh) * HD + tl * 8;
                *(act8*)(rp.k_cache + o) = f32_to_act8(cur_k);
                *(act8*)(rp.v_cache + o) = f32_to_act8(cur_v);
            }
        }
    } else {
#pragma unroll
        for (int g = 0; g < G; g++) {
            act8 t = *(const act8*)(q + tok * num_heads * HD + (u64)(head0 + g) * HD + tl * 8);
            act8_to_f32(t, qv[g]);
#pragma unroll
            for (int e = 0; e < 8; e++) qv[g][e] *= scale * LOG2E;
        }
    }
    __syncthreads();

    float m[G], l[G], acc[G][8];
#pragma unroll
    for (int g = 0; g < G; g++) {
        m[g] = -RV_INF;
        l[g] = 0.f;
#pragma unroll
        for (int e = 0; e < 8; e++) acc[g][e] = 0.f;
    }
    if (ROPE && has_cur && warp == 0) {
        // Warp 0 starts from the new token: score q . k over the row's lanes; both rows take
        // it as their maximum (rows share m), row 0 alone its weight 1 and v.
#pragma unroll
        for (int g = 0; g < G; g++) {
            float d = 0.f;
#pragma unroll
            for (int e = 0; e < 8; e++) d += qv[g][e] * cur_k[e];
#pragma unroll
            for (int o = TPT / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
            m[g] = d;
            l[g] = row == 0 ? 1.f : 0.f;
#pragma unroll
            for (int e = 0; e < 8; e++) acc[g][e] = row == 0 ? cur_v[e] : 0.f;
        }
    }

    // Warp-uniform loop: the shuffles below see every lane.
    for (int it = warp * TOK; it < n_loop; it += NW * TOK) {
        act8 kr[L], vr[L];
#pragma unroll
        for (int i = 0; i < L; i++) {
            const int pos = start + min(it + row + i * TPW, n_loop - 1);  // past the end: reread, masked
            int bi, off;
            if (bs_shift >= 0) {
                bi = pos >> bs_shift;
                off = pos & (block_size - 1);
            } else {
                bi = pos / block_size;
                off = pos - bi * block_size;
            }
            const u64 o = ((u64)s_bt[bi - fb] * block_size + off) * tok_stride;
            kr[i] = *(const act8*)(kbase + o);
            vr[i] = *(const act8*)(vbase + o);
        }
        float sc[L][G];
#pragma unroll
        for (int i = 0; i < L; i++) {
            float kf[8];
            act8_to_f32(kr[i], kf);
#pragma unroll
            for (int g = 0; g < G; g++) {
                float d = 0.f;
#pragma unroll
                for (int e = 0; e < 8; e++) d += qv[g][e] * kf[e];
                sc[i][g] = d;
            }
        }
#pragma unroll
        for (int o = TPT / 2; o > 0; o >>= 1)
#pragma unroll
            for (int i = 0; i < L; i++)
#pragma unroll
                for (int g = 0; g < G; g++) sc[i][g] += __shfl_xor_sync(0xffffffffu, sc[i][g], o);
#pragma unroll
        for (int i = 0; i < L; i++)
            if (it + row + i * TPW >= n_loop)
#pragma unroll
                for (int g = 0; g < G; g++) sc[i][g] = -RV_INF;
#pragma unroll
        for (int g = 0; g < G; g++) {
            float mx = sc[0][g];
#pragma unroll
            for (int i = 1; i < L; i++) mx = fmaxf(mx, sc[i][g]);
#pragma unroll
            for (int o = TPT; o < 32; o <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            const float mn = fmaxf(m[g], mx);
            const float alpha = rv_ex2(m[g] - mn);
            m[g] = mn;
            l[g] *= alpha;
#pragma unroll
            for (int e = 0; e < 8; e++) acc[g][e] *= alpha;
        }
#pragma unroll
        for (int i = 0; i < L; i++) {
            float vf[8];
            act8_to_f32(vr[i], vf);
#pragma unroll
            for (int g = 0; g < G; g++) {
                const float p = rv_ex2(sc[i][g] - m[g]);
                l[g] += p;
#pragma unroll
                for (int e = 0; e < 8; e++) acc[g][e] += p * vf[e];
            }
        }
    }
    // Rows of the warp share m; add their sums and outputs.
#pragma unroll
    for (int o = TPT; o < 32; o <<= 1)
#pragma unroll
        for (int g = 0; g < G; g++) {
            l[g] += __shfl_xor_sync(0xffffffffu, l[g], o);
#pragma unroll
            for (int e = 0; e < 8; e++) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], o);
        }
    if (row == 0) {
#pragma unroll
        for (int g = 0; g < G; g++) {
            float4* d = (float4*)(s_acc + (warp * G + g) * HD + tl * 8);
            d[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
            d[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
        }
    }
    if (lane == 0) {
#pragma unroll
        for (int g = 0; g < G; g++) {
            s_m[warp * G + g] = m[g];
            s_l[warp * G + g] = l[g];
        }
    }
    __syncthreads();
    const u64 rbase = ((u64)s * num_heads + head0) * max_parts;  // row of (head0, part 0)
    for (int i = tid; i < G * HD; i += NT) {
        const int g = i / HD, d = i % HD;
        float M = -RV_INF;
#pragma unroll
        for (int w = 0; w < NW; w++) M = fmaxf(M, s_m[w * G + g]);
        float o = 0.f, sum = 0.f;
#pragma unroll
        for (int w = 0; w < NW; w++) {
            const float c = rv_ex2(s_m[w * G + g] - M);
            o += c * s_acc[(w * G + g) * HD + d];
            sum += c * s_l[w * G + g];
        }
        if (num_parts == 1) {
            out[tok * num_heads * HD + (u64)(head0 + g) * HD + d] = f2act(o / sum);
        } else {
            const u64 r = rbase + (u64)g * max_parts + blockIdx.z;
            tmp_out[r * HD + d] = o / sum;
            if (d == 0) {
                max_logits[r] = M;
                exp_sums[r] = sum;
            }
        }
    }
    if (num_parts == 1) return;

    // ---- the last partition to finish merges all of them
    __threadfence();
    __syncthreads();
    u32* counter = counters + (u64)s * gridDim.x + blockIdx.x;
    if (tid == 0) s_last = atomicAdd(counter, 1u) == (u32)(num_parts - 1);
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    float* s_w = s_acc;  // [G][num_parts] weights (host keeps max_parts <= NW * HD)
    float* s_inv = s_m;  // [G]
    for (int g = warp; g < G; g += NW) {
        const u64 r = rbase + (u64)g * max_parts;
        float M = -RV_INF;
        for (int p = lane; p < num_parts; p += 32) M = fmaxf(M, __ldcg(max_logits + r + p));
        M = warp_max(M);
        float sum = 0.f;
        for (int p = lane; p < num_parts; p += 32) {
            const float w = __ldcg(exp_sums + r + p) * rv_ex2(__ldcg(max_logits + r + p) - M);
            s_w[g * num_parts + p] = w;
            sum += w;
        }
        sum = warp_sum(sum);
        if (lane == 0) s_inv[g] = 1.f / sum;
    }
    __syncthreads();
    // One float4 of one head per thread; 8 partitions' loads in flight per step.
    for (int i = tid; i < G * HD / 4; i += NT) {
        const int g = i / (HD / 4), d4 = i % (HD / 4);
        const float4* src = (const float4*)(tmp_out + (rbase + (u64)g * max_parts) * HD) + d4;
        const float* w = s_w + g * num_parts;
        float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int p0 = 0; p0 < num_parts; p0 += 8) {
            float4 v[8];
#pragma unroll
            for (int u = 0; u < 8; u++)
                v[u] = p0 + u < num_parts ? __ldcg(src + (u64)(p0 + u) * (HD / 4))
                                          : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int u = 0; u < 8; u++) {
                const float c = p0 + u < num_parts ? w[p0 + u] : 0.f;
                o.x += c * v[u].x;
                o.y += c * v[u].y;
                o.z += c * v[u].z;
                o.w += c * v[u].w;
            }
        }
        const float inv = s_inv[g];
        const float f[4] = {o.x * inv, o.y * inv, o.z * inv, o.w * inv};
        act_t* dst = out + tok * num_heads * HD + (u64)(head0 + g) * HD + d4 * 4;
        *(u32*)dst = act_pack2(f[0], f[1]);
        *(u32*)(dst + 2) = act_pack2(f[2], f[3]);
    }
    if (tid == 0) *counter = 0u;  // ready for the next launch (and graph replay)
}

#define DECODE2_ARGS                                                                             \
    act_t *out, float *tmp_out, float *max_logits, float *exp_sums, u32 *counters,               \
        const act_t *q, const act_t *k_cache, const act_t *v_cache, const u32 *block_tables,     \
        const u32 *query_start, const u32 *query_len, const u32 *context_len, int max_blocks,    \
        int num_heads, int num_kv_heads, int block_size, int bs_shift, float scale,              \
        int part_size, int hchunks
#define DECODE2_PASS                                                                             \
    out, tmp_out, max_logits, exp_sums, counters, q, k_cache, v_cache, block_tables,             \
        query_start, query_len, context_len, max_blocks, num_heads, num_kv_heads, block_size,    \
        bs_shift, scale, part_size, hchunks
#define DECODE2_KERNEL(HD, G)                                                                    \
    extern "C" __global__ void __launch_bounds__(DEC2_NT)                                        \
        paged_decode_v2_h##HD##_g##G(DECODE2_ARGS) {                                             \
        pdl_trigger();                                                                           \
        decode2_impl<HD, G, 4, DEC2_NW, false>(DECODE2_PASS, DecodeRope{});                      \
    }
// NW warps per CTA instead of DEC2_NW (experiments: RVLLM_DECODE_NW).
#define DECODE2_KERNEL_W(HD, G, NW)                                                              \
    extern "C" __global__ void __launch_bounds__(32 * NW)                                        \
        paged_decode_v2_h##HD##_g##G##_w##NW(DECODE2_ARGS) {                                     \
        pdl_trigger();                                                                           \
        decode2_impl<HD, G, 4, NW, false>(DECODE2_PASS, DecodeRope{});                           \
    }
// The fused rope variant (decode-only steps; q is the Q/K/V projection), NW warps per CTA.
#define DECODE2R_KERNEL(HD, G, NW)                                                               \
    extern "C" __global__ void __launch_bounds__(32 * NW)                                        \
        paged_decode_v2r_h##HD##_g##G##_w##NW(                                                   \
            DECODE2_ARGS, const act_t* norm_x, int norm_cols, float eps, const u32* positions,   \
            const u32* slot_mapping, act_t* k_cache_w, act_t* v_cache_w, u64 num_slots,          \
            u64 qkv_stride, float log2_theta, int neox) {                                        \
        pdl_trigger();                                                                           \
        const DecodeRope rp{norm_x,    norm_cols, eps,        positions,  slot_mapping, k_cache_w, \
                            v_cache_w, num_slots, qkv_stride, log2_theta, neox};                 \
        decode2_impl<HD, G, 4, NW, true>(DECODE2_PASS, rp);                                      \
    }
// Explicit loads per thread per iteration (experiments: RVLLM_DECODE_L).
#define DECODE2_KERNEL_L(HD, G, L)                                                               \
    extern "C" __global__ void __launch_bounds__(DEC2_NT)                                        \
        paged_decode_v2_h##HD##_g##G##_l##L(DECODE2_ARGS) {                                      \
        pdl_trigger();                                                                           \
        decode2_impl<HD, G, L, DEC2_NW, false>(DECODE2_PASS, DecodeRope{});                                                    \
    }
#define DECODE2_ALL_G(HD)                                                                        \
    DECODE2_KERNEL(HD, 1)                                                                        \
    DECODE2_KERNEL(HD, 2)                                                                        \
    DECODE2_KERNEL(HD, 3)                                                                        \
    DECODE2_KERNEL(HD, 4)                                                                        \
    DECODE2_KERNEL(HD, 5)                                                                        \
    DECODE2_KERNEL(HD, 6)                                                                        \
    DECODE2_KERNEL(HD, 7)                                                                        \
    DECODE2_KERNEL(HD, 8)

// ---------------------------------------------------------------- general (prefill) path
#define PF_BM 64
#define PF_BN 64
#define PF_NT 256

template <int HD>
__device__ __forceinline__ void prefill_attn_impl(
    act_t* __restrict__ out, const act_t* __restrict__ q, const act_t* __restrict__ k_cache,
    const act_t* __restrict__ v_cache, const u32* __restrict__ block_tables,
    const u32* __restrict__ query_start, const u32* __restrict__ query_len,
    const u32* __restrict__ context_len, int max_blocks, int num_heads, int num_kv_heads,
    int block_size, float scale, int G, int hchunks, int skip_decode, const u32* seq_list) {
    constexpr int BM = PF_BM, BN = PF_BN, NT = PF_NT, LD = HD + 8;
    constexpr int NC = HD / 32;  // 8-wide dim chunks owned by each thread
    extern __shared__ __align__(16) unsigned char smem_raw[];
    act_t* Qs = (act_t*)smem_raw;
    act_t* Ks = Qs + BM * LD;
    act_t* Vs = Ks + BN * LD;

    // seq_list (when given) names the sequences of the grid's rows: a mixed step launches
    // only over its prefill sequences instead of returning from every decode one.
    const int s = seq_list ? (int)seq_list[blockIdx.y] : (int)blockIdx.y;
    const int qlen = (int)query_len[s];
    if (qlen == 0 || (skip_decode && qlen == 1)) return;
    const int tpc = BM / G;  // query tokens per CTA
    const int t0 = blockIdx.x * tpc;
    if (t0 >= qlen) return;
    const int kvh = blockIdx.z / hchunks, chunk = blockIdx.z % hchunks;
    const int group = num_heads / num_kv_heads;
    const int head0 = kvh * group + chunk * G;
    const int ctx = (int)context_len[s];
    const int qpos0 = ctx - qlen;
    const u64 qs = query_start[s];
    const u32* bt = block_tables + (u64)s * max_blocks;
    const u64 tok_stride = (u64)num_kv_heads * HD;
    const u64 qrow = (u64)num_heads * HD;
    const int tid = threadIdx.x, lane = tid & 31;

    for (int i = tid; i < BM * (HD / 8); i += NT) {
        const int r = i / (HD / 8), c = i % (HD / 8);
        const int t = t0 + r / G, g = r % G;
        act8 v = act8{};
        if (r < tpc * G && t < qlen) v = *(const act8*)(q + (qs + t) * qrow + (u64)(head0 + g) * HD + c * 8);
        *(act8*)(Qs + r * LD + c * 8) = v;
    }

    const int row = tid >> 2, r4 = tid & 3;
    const int my_tok = t0 + row / G;
    const bool row_valid = row < tpc * G && my_tok < qlen;
    const int my_pos = qpos0 + my_tok;
    const int kv_end = qpos0 + min(t0 + tpc, qlen);  // keys needed by the last query of the tile

    float m = -RV_INF, l = 0.f;
    float acc[NC][8];
#pragma unroll
    for (int c = 0; c < NC; c++)
#pragma unroll
        for (int e = 0; e < 8; e++) acc[c][e] = 0.f;

    for (int kt = 0; kt < kv_end; kt += BN) {
        __syncthreads();
        for (int i = tid; i < BN * (HD / 8); i += NT) {
            const int j = i / (HD / 8), c = i % (HD / 8);
            const int pos = kt + j;
            act8 kv = act8{}, vv = act8{};
            if (pos < kv_end) {
                const u64 blk = bt[pos / block_size];
                const u64 off = (blk * block_size + pos % block_size) * tok_stride + (u64)kvh * HD + c * 8;
                kv = *(const act8*)(k_cache + off);
                vv = *(const act8*)(v_cache + off);
            }
            *(act8*)(Ks + j * LD + c * 8) = kv;
            *(act8*)(Vs + j * LD + c * 8) = vv;
        }
        __syncthreads();

        float sc[16];
#pragma unroll
        for (int i = 0; i < 16; i++) sc[i] = 0.f;
#pragma unroll 2
        for (int c = 0; c < HD / 8; c++) {
            float qf[8];
            act8_to_f32(*(const act8*)(Qs + row * LD + c * 8), qf);
#pragma unroll
            for (int i = 0; i < 16; i++) {
                float kf[8];
                act8_to_f32(*(const act8*)(Ks + (r4 + 4 * i) * LD + c * 8), kf);
#pragma unroll
                for (int e = 0; e < 8; e++) sc[i] += qf[e] * kf[e];
            }
        }
        float tmax = -RV_INF;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            const int pos = kt + r4 + 4 * i;
            sc[i] = (row_valid && pos <= my_pos) ? sc[i] * scale : -RV_INF;
            tmax = fmaxf(tmax, sc[i]);
        }
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
        const float m_new = fmaxf(m, tmax);
        const bool dead = m_new == -RV_INF;
        const float alpha = dead ? 1.f : __expf(m - m_new);
        float psum = 0.f;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            sc[i] = dead ? 0.f : __expf(sc[i] - m_new);
            psum += sc[i];
        }
        l = l * alpha + psum;
        m = m_new;
#pragma unroll
        for (int c = 0; c < NC; c++)
#pragma unroll
            for (int e = 0; e < 8; e++) acc[c][e] *= alpha;
#pragma unroll
        for (int i = 0; i < 16; i++) {
#pragma unroll
            for (int src = 0; src < 4; src++) {
                const float p = __shfl_sync(0xffffffffu, sc[i], (lane & ~3) | src);
                const int j = src + 4 * i;
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    float vf[8];
                    act8_to_f32(*(const act8*)(Vs + j * LD + c * 32 + r4 * 8), vf);
#pragma unroll
                    for (int e = 0; e < 8; e++) acc[c][e] += p * vf[e];
                }
            }
        }
    }
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (row_valid) {
        const float inv = 1.f / l;
        act_t* o = out + (qs + my_tok) * qrow + (u64)(head0 + row % G) * HD;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            float f[8];
#pragma unroll
            for (int e = 0; e < 8; e++) f[e] = acc[c][e] * inv;
            *(act8*)(o + c * 32 + r4 * 8) = f32_to_act8(f);
        }
    }
}

#define PREFILL_KERNEL(HD)                                                                       \
    extern "C" __global__ void __launch_bounds__(PF_NT) paged_prefill_h##HD(                     \
        act_t* out, const act_t* q, const act_t* k_cache, const act_t* v_cache,                      \
        const u32* block_tables, const u32* query_start, const u32* query_len,                   \
        const u32* context_len, int max_blocks, int num_heads, int num_kv_heads, int block_size, \
        float scale, int G, int hchunks, int skip_decode, const u32* seq_list) {                 \
        prefill_attn_impl<HD>(out, q, k_cache, v_cache, block_tables, query_start, query_len,    \
                              context_len, max_blocks, num_heads, num_kv_heads, block_size,      \
                              scale, G, hchunks, skip_decode, seq_list);                         \
    }

// @instantiations: every variant, for the compile test. At run time the loader drops the lines
// below and compiles only the variants the model uses (kernel name -> macro: see compile.rs).
DECODE_ALL_G(64)
DECODE_ALL_G(128)
DECODE_ALL_G(256)
DECODE2_ALL_G(64)
DECODE2_ALL_G(128)
DECODE2_ALL_G(256)
DECODE2_KERNEL_W(128, 4, 2)
DECODE2_KERNEL_W(64, 3, 1)
DECODE2R_KERNEL(128, 4, 4)
DECODE2R_KERNEL(128, 4, 2)
DECODE2R_KERNEL(64, 3, 1)
DECODE2R_KERNEL(256, 8, 4)
PREFILL_KERNEL(64)
PREFILL_KERNEL(96)
PREFILL_KERNEL(128)
PREFILL_KERNEL(256)
