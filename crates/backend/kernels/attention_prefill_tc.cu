// Tensor-core flash attention for the prefill / chunked-prefill path over the paged KV cache
// (head dims 64 and 128). Same parameters and semantics as paged_prefill_h{HD} in attention.cu.
//
// FlashAttention-2 structure, act_t (bf16 or f16) mma.sync m16n8k16 with f32 accumulation:
//   * A CTA of NW warps (4 or 8) owns a tile of 16 * NW rows; a row is a (query token, head-in-group) pair,
//     row r = token t0 + r / G, head head0 + r % G, so one K/V tile serves the G heads of the
//     GQA group. Each warp owns 16 consecutive rows; rows past the valid ones are clamped to the
//     last valid row (finite math, never stored).
//   * Keys are processed in tiles of 64, gathered through the block table into shared memory
//     with cp.async (16-byte copies, zero-filled past the needed range), double-buffered.
//   * S = Q·Kᵀ: Q fragments live in registers for the whole kernel (ldmatrix once), K fragments
//     come from ldmatrix. Online softmax in registers in the log2 domain (ex2.approx); rows are
//     spread over the 4 lanes of a quad, so row max / sum need two shuffles.
//   * P is rounded to act_t and fed straight from the S accumulators as the A operand of P·V;
//     V fragments come from ldmatrix.trans.
//   * Causal masking only on tiles that reach past the first row's position; a warp skips a key
//     tile entirely when all its rows end before it.
//
// Shared memory: [2 stages][K, V][64 keys][HD + 8] act_t (rows padded by 16 bytes: ldmatrix and
// the cp.async stores are conflict-free). Q is staged once in stage 1 (its K then V buffer)
// before the loop, the output in stage 0 after it. 68 KiB for HD 128, 36 KiB for HD 64, for
// either warp count.

#define PFTC_BN 64

__device__ __forceinline__ u32 pftc_smem_addr(const void* p) {
    return (u32)__cvta_generic_to_shared(p);
}

// 16-byte async copy global -> shared; copies zeros when !valid (src is not read then).
__device__ __forceinline__ void pftc_cp16(u32 dst, const void* src, bool valid) {
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n)
                 : "memory");
}

__device__ __forceinline__ void pftc_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void pftc_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void pftc_ldsm4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

__device__ __forceinline__ void pftc_ldsm4_t(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

// c[0..3] += A(16x16, row) · B(16x8, col); a[] and b0/b1 in the m16n8k16 fragment layouts.
// The operand type is act_t's (bf16, or f16 in the RV_F16 build).
__device__ __forceinline__ void pftc_mma(float* c, const u32* a, u32 b0, u32 b1) {
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32." RV_ACT_PTX "." RV_ACT_PTX
        ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float pftc_ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Two floats as an act_t pair: `lo` in the low half (the lower column index of a fragment pair).
__device__ __forceinline__ u32 pftc_pack(float lo, float hi) { return act_pack2(lo, hi); }

template <int HD, int NW>
__device__ __forceinline__ void prefill_tc_impl(
    act_t* __restrict__ out, const act_t* __restrict__ q, const act_t* __restrict__ k_cache,
    const act_t* __restrict__ v_cache, const u32* __restrict__ block_tables,
    const u32* __restrict__ query_start, const u32* __restrict__ query_len,
    const u32* __restrict__ context_len, int max_blocks, int num_heads, int num_kv_heads,
    int block_size, float scale, int G, int hchunks, int skip_decode, const u32* seq_list) {
    constexpr int BM = 16 * NW, BN = PFTC_BN, NT = 32 * NW;
    constexpr int LD = HD + 8;       // smem row pitch in elements (HD*2 + 16 bytes)
    constexpr int CPR = HD / 8;      // 16-byte chunks per row
    constexpr int KD = HD / 16;      // k-steps of Q·Kᵀ
    constexpr int ND = HD / 8;       // 8-wide output column tiles
    constexpr int NS = BN / 8;       // 8-wide score column tiles
    constexpr int TILE = BN * LD;    // elements of one K or V buffer (== BM * LD)
    static_assert(BM <= 2 * BN, "Q is staged in stage 1's K and V buffers");
    static_assert(HD % 16 == 0 && (BN * CPR) % NT == 0 && (BM * CPR) % NT == 0, "tiling");
    extern __shared__ __align__(16) unsigned char pftc_smem[];
    act_t* sm = reinterpret_cast<act_t*>(pftc_smem);
    const u32 sm_base = pftc_smem_addr(pftc_smem);

    // seq_list (when given) names the sequences of the grid's rows: a mixed step launches
    // only over its prefill sequences (a grid over all of them spent most CTAs returning).
    const int s = seq_list ? (int)seq_list[blockIdx.y] : (int)blockIdx.y;
    const int qlen = (int)query_len[s];
    if (qlen == 0 || (skip_decode && qlen == 1)) return;
    const int tpc = BM / G;  // query tokens per CTA
    // Heaviest (latest) query tiles first: shorter tail for the causal imbalance.
    const int t0 = (int)(gridDim.x - 1 - blockIdx.x) * tpc;
    if (t0 >= qlen) return;
    const int kvh = blockIdx.z / hchunks, chunk = blockIdx.z % hchunks;
    const int group = num_heads / num_kv_heads;
    const int head0 = kvh * group + chunk * G;
    const int ctx = (int)context_len[s];
    const int qpos0 = ctx - qlen;  // position of query token 0
    const u64 qs = query_start[s];
    const u32* bt = block_tables + (u64)s * max_blocks;
    const u64 tok_stride = (u64)num_kv_heads * HD;
    const u64 qrow = (u64)num_heads * HD;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    const int ntok = min(tpc, qlen - t0);
    const int nrows = ntok * G;                       // rows 0..nrows-1 are valid
    const int pos_first = qpos0 + t0;                 // position of the tile's first token
    const int kv_end = pos_first + ntok;              // keys needed by the tile's last token
    const int n_tiles = (kv_end + BN - 1) / BN;
    const int n_full = (pos_first + 1) / BN;          // tiles before this need no causal mask

    // Key tile i into stage st (zeros past kv_end). Consecutive threads copy consecutive
    // 16-byte chunks of a key row (whole 32-byte sectors per instruction).
    auto load_kv = [&](int i, int st) {
        const u32 kd = sm_base + (u32)(st * 2 * TILE * 2);
#pragma unroll 1  // full unrolling keeps 8 offsets live: spills at 168 registers
        for (int it = 0; it < BN * CPR / NT; it++) {
            const int idx = tid + it * NT;
            const int j = idx / CPR, c = idx % CPR;
            const int pos = i * BN + j;
            const bool ok = pos < kv_end;
            u64 off = 0;
            if (ok) {
                const u64 blk = bt[pos / block_size];
                off = (blk * block_size + pos % block_size) * tok_stride + (u64)kvh * HD + c * 8;
            }
            const u32 d = kd + (u32)((j * LD + c * 8) * 2);
            pftc_cp16(d, k_cache + off, ok);
            pftc_cp16(d + TILE * 2, v_cache + off, ok);
        }
    };

    // ---- Q tile -> stage 1 (rows 0..BM-1 of its K, V buffers; own group), key tile 0 -> stage 0.
#pragma unroll
    for (int it = 0; it < BM * CPR / NT; it++) {
        const int idx = tid + it * NT;
        const int r = idx / CPR, c = idx % CPR;
        const bool ok = r < nrows;
        const act_t* src = q;
        if (ok) src = q + (qs + t0 + r / G) * qrow + (u64)(head0 + r % G) * HD + c * 8;
        pftc_cp16(sm_base + (u32)((2 * TILE + r * LD + c * 8) * 2), src, ok);
    }
    pftc_commit();
    load_kv(0, 0);
    pftc_commit();
    pftc_wait<1>();  // Q landed (tile 0 may still be in flight)
    __syncthreads();

    // Q fragments (A operand, 16 rows x HD per warp): x4 matrices = rows 0-7 / 8-15 x cols
    // 0-7 / 8-15 of each 16-column step -> a0..a3.
    u32 qf[KD][4];
    {
        const act_t* qsm = sm + 2 * TILE;
        const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        const int cb = (lane >> 4) * 8;
#pragma unroll
        for (int kk = 0; kk < KD; kk++)
            pftc_ldsm4(pftc_smem_addr(qsm + r * LD + kk * 16 + cb), qf[kk][0], qf[kk][1], qf[kk][2],
                       qf[kk][3]);
    }
    __syncthreads();  // stage 1 is free for the prefetch of tile 1

    // This thread's two rows (fragment rows lane/4 and lane/4 + 8 of the warp's 16) and their
    // positions; rows past the valid ones behave like the last valid row.
    const int rowA = warp * 16 + (lane >> 2), rowB = rowA + 8;
    const int posA = pos_first + min(rowA, nrows - 1) / G;
    const int posB = pos_first + min(rowB, nrows - 1) / G;
    const bool warp_active = warp * 16 < nrows;
    const int warp_last_pos = pos_first + min(warp * 16 + 15, nrows - 1) / G;
    const float sl2 = scale * 1.4426950408889634f;  // scores -> log2 domain

    float o[ND][4];
#pragma unroll
    for (int d = 0; d < ND; d++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[d][e] = 0.f;
    float mA = -RV_INF, mB = -RV_INF;  // running max, log2 domain
    float lA = 0.f, lB = 0.f;          // running sum over this thread's columns

    for (int i = 0; i < n_tiles; i++) {
        if (i + 1 < n_tiles) {
            load_kv(i + 1, (i + 1) & 1);
            pftc_commit();
            pftc_wait<1>();
        } else {
            pftc_wait<0>();
        }
        __syncthreads();
        // Warp-uniform: tile 0 is always computed (key 0 is visible to every row).
        if (warp_active && i * BN <= warp_last_pos) {
            // Shared addresses as one per-lane base plus compile-time offsets.
            const u32 kst = sm_base + (u32)((i & 1) * 2 * TILE * 2);
            const u32 vst = kst + (u32)(TILE * 2);

            // ---- S = Q·Kᵀ (16 x 64 per warp). B = Kᵀ: one x4 ldmatrix on 16 keys x 16 dims
            // gives b0/b1 of key tiles np*16 (matrices 0, 1) and np*16 + 8 (matrices 2, 3).
            float sc[NS][4];
#pragma unroll
            for (int n = 0; n < NS; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) sc[n][e] = 0.f;
            {
                const u32 kl = kst + (u32)((((lane & 7) + (lane >> 4) * 8) * LD +
                                            ((lane >> 3) & 1) * 8) * 2);
#pragma unroll
                for (int kk = 0; kk < KD; kk++) {
#pragma unroll
                    for (int np = 0; np < NS / 2; np++) {
                        u32 b0, b1, b2, b3;
                        pftc_ldsm4(kl + (u32)((np * 16 * LD + kk * 16) * 2), b0, b1, b2, b3);
                        pftc_mma(sc[2 * np], qf[kk], b0, b1);
                        pftc_mma(sc[2 * np + 1], qf[kk], b2, b3);
                    }
                }
            }

            // ---- causal mask (also hides the zero-filled keys >= kv_end)
            if (i >= n_full) {
                const int kb = i * BN + (lane & 3) * 2;
#pragma unroll
                for (int n = 0; n < NS; n++) {
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int key = kb + n * 8 + (e & 1);
                        if (key > (e < 2 ? posA : posB)) sc[n][e] = -RV_INF;
                    }
                }
            }

            // ---- online softmax (c0, c1: row A; c2, c3: row B)
            float xA = -RV_INF, xB = -RV_INF;
#pragma unroll
            for (int n = 0; n < NS; n++) {
                xA = fmaxf(xA, fmaxf(sc[n][0], sc[n][1]));
                xB = fmaxf(xB, fmaxf(sc[n][2], sc[n][3]));
            }
            xA = fmaxf(xA, __shfl_xor_sync(0xffffffffu, xA, 1));
            xA = fmaxf(xA, __shfl_xor_sync(0xffffffffu, xA, 2));
            xB = fmaxf(xB, __shfl_xor_sync(0xffffffffu, xB, 1));
            xB = fmaxf(xB, __shfl_xor_sync(0xffffffffu, xB, 2));
            const float nA = fmaxf(mA, xA * sl2), nB = fmaxf(mB, xB * sl2);
            // A row with nothing visible yet keeps 0 as reference: no inf - inf.
            const float uA = nA == -RV_INF ? 0.f : nA, uB = nB == -RV_INF ? 0.f : nB;
            const float aA = pftc_ex2(mA - uA), aB = pftc_ex2(mB - uB);
            mA = nA;
            mB = nB;
            float sA = 0.f, sB = 0.f;
#pragma unroll
            for (int n = 0; n < NS; n++) {
                sc[n][0] = pftc_ex2(fmaf(sc[n][0], sl2, -uA));
                sc[n][1] = pftc_ex2(fmaf(sc[n][1], sl2, -uA));
                sc[n][2] = pftc_ex2(fmaf(sc[n][2], sl2, -uB));
                sc[n][3] = pftc_ex2(fmaf(sc[n][3], sl2, -uB));
                sA += sc[n][0] + sc[n][1];
                sB += sc[n][2] + sc[n][3];
            }
            lA = lA * aA + sA;
            lB = lB * aB + sB;
#pragma unroll
            for (int d = 0; d < ND; d++) {
                o[d][0] *= aA;
                o[d][1] *= aA;
                o[d][2] *= aB;
                o[d][3] *= aB;
            }

            // ---- O += P·V. The S accumulators of key tiles 2kk, 2kk+1 are the A fragment of
            // k-step kk. B = V (keys x dims): x4 ldmatrix.trans on 16 keys x 16 dims gives b0/b1
            // of dim tiles dp*16 (matrices 0, 1) and dp*16 + 8 (matrices 2, 3).
            {
                const u32 vl = vst + (u32)((((lane & 7) + ((lane >> 3) & 1) * 8) * LD +
                                            (lane >> 4) * 8) * 2);
#pragma unroll
                for (int kk = 0; kk < BN / 16; kk++) {
                    u32 pa[4];
                    pa[0] = pftc_pack(sc[2 * kk][0], sc[2 * kk][1]);
                    pa[1] = pftc_pack(sc[2 * kk][2], sc[2 * kk][3]);
                    pa[2] = pftc_pack(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
                    pa[3] = pftc_pack(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
                    for (int dp = 0; dp < HD / 16; dp++) {
                        u32 b0, b1, b2, b3;
                        pftc_ldsm4_t(vl + (u32)((kk * 16 * LD + dp * 16) * 2), b0, b1, b2, b3);
                        pftc_mma(o[2 * dp], pa, b0, b1);
                        pftc_mma(o[2 * dp + 1], pa, b2, b3);
                    }
                }
            }
        }
        __syncthreads();  // stage i&1 is rewritten by the prefetch of the next iteration
    }

    // ---- epilogue: normalize, stage the warp's 16 rows in stage 0 (rows 0..BM-1 of its K and V
    // buffers), 16-byte stores.
    if (!warp_active) return;  // warp-uniform; no block-wide barrier below
    lA += __shfl_xor_sync(0xffffffffu, lA, 1);
    lA += __shfl_xor_sync(0xffffffffu, lA, 2);
    lB += __shfl_xor_sync(0xffffffffu, lB, 1);
    lB += __shfl_xor_sync(0xffffffffu, lB, 2);
    const float iA = 1.f / lA, iB = 1.f / lB;
    act_t* osm = sm;
    {
        const int cb = (lane & 3) * 2;
#pragma unroll
        for (int d = 0; d < ND; d++) {
            *reinterpret_cast<u32*>(osm + rowA * LD + d * 8 + cb) =
                pftc_pack(o[d][0] * iA, o[d][1] * iA);
            *reinterpret_cast<u32*>(osm + rowB * LD + d * 8 + cb) =
                pftc_pack(o[d][2] * iB, o[d][3] * iB);
        }
    }
    __syncwarp();
#pragma unroll
    for (int it = 0; it < 16 * CPR / 32; it++) {
        const int idx = lane + it * 32;
        const int r = warp * 16 + idx / CPR, c = idx % CPR;
        if (r < nrows) {
            const act8 v = *reinterpret_cast<const act8*>(osm + r * LD + c * 8);
            *reinterpret_cast<act8*>(out + (qs + t0 + r / G) * qrow +
                                       (u64)(head0 + r % G) * HD + c * 8) = v;
        }
    }
}

#define PREFILL_TC_KERNEL(NAME, HD, NW, MINB)                                                    \
    extern "C" __global__ void __launch_bounds__(32 * NW, MINB) NAME(                            \
        act_t* out, const act_t* q, const act_t* k_cache, const act_t* v_cache,                      \
        const u32* block_tables, const u32* query_start, const u32* query_len,                   \
        const u32* context_len, int max_blocks, int num_heads, int num_kv_heads, int block_size, \
        float scale, int G, int hchunks, int skip_decode, const u32* seq_list) {                 \
        prefill_tc_impl<HD, NW>(out, q, k_cache, v_cache, block_tables, query_start, query_len,      \
                            context_len, max_blocks, num_heads, num_kv_heads, block_size, scale, \
                            G, hchunks, skip_decode, seq_list);                                  \
    }
// @instantiations: every variant, for the compile test (the loader compiles one at a time).
// 4 warps / 64 rows: 3 CTAs per SM (168 registers, 68 KiB smem for HD 128).
PREFILL_TC_KERNEL(paged_prefill_tc_h64, 64, 4, 3)
PREFILL_TC_KERNEL(paged_prefill_tc_h128, 128, 4, 3)
// 8 warps / 128 rows: half the K/V traffic per row, one CTA per SM (RVLLM_PREFILL_TC=8).
PREFILL_TC_KERNEL(paged_prefill_tc8_h64, 64, 8, 1)
PREFILL_TC_KERNEL(paged_prefill_tc8_h128, 128, 8, 1)
