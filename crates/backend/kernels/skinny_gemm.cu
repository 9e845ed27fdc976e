// ---------------------------------------------------------------- skinny GEMM (3..32 tokens)
// out[t][r] = w[r] . x[t] for a step of a few tokens on the tensor cores. Like the GEMVs above,
// such a step is bound by reading each weight once from HBM; the CUDA-core GEMV is instruction
// bound past 2 tokens (every weight chunk meets T input rows), and cuBLASLt's tiles for tiny M
// stream the weights at ~80% of HBM bandwidth.
//
// mma.sync m16n8k16 with A = 16 weight rows, B = 8 tokens. A dot product does not depend on the
// order of k, so k is permuted inside each 32-wide chunk such that every lane feeds its A and B
// fragments from 16 contiguous bytes: lane (g = lane / 4, c = lane % 4) loads elements
// [8c, 8c + 8) of the chunk from weight rows g and g + 8 and from token g's input row; the
// first mma takes elements 8c + 0..3 as fragment columns (2c, 2c + 1, 2c + 8, 2c + 9), the
// second elements 8c + 4..7. Per chunk a warp issues two 16-byte weight loads (streamed past
// L1), one 16-byte input load per 8 tokens (x stays in L1/L2 for every block) and two mma per
// 8 tokens.
//
// A block owns 16 weight rows; its warps split k and add their partial sums through shared
// memory. Requires k % (32 * warps) == 0 and 16-byte aligned rows (the host checks).

#define SKINNY_MAX_WARPS 4
#define SKINNY_UNROLL 4

// Read-only input loads, cached in L1: every block of the SM reads the same x.
__device__ __forceinline__ uint4 ld_x16(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

__device__ __forceinline__ void skinny_mma(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                           u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." RV_ACT_PTX "." RV_ACT_PTX
                 ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// One 32-wide chunk (uint4 index `j` from each lane's base) into the accumulators.
template <int NT>
__device__ __forceinline__ void skinny_chunk(float (*acc)[4], const uint4& wa, const uint4& wb,
                                             const uint4* const* px, const bool* okx, int j) {
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const uint4 xv = okx[nt] ? ld_x16(px[nt] + j) : make_uint4(0, 0, 0, 0);
        skinny_mma(acc[nt], wa.x, wb.x, wa.y, wb.y, xv.x, xv.y);
        skinny_mma(acc[nt], wa.z, wb.z, wa.w, wb.w, xv.z, xv.w);
    }
}

// NT tiles of 8 tokens (t <= 8 * NT); `klen`: the k elements of each warp (k / warps).
template <int NT>
__device__ __forceinline__ void skinny_impl(act_t* __restrict__ out, const act_t* __restrict__ x,
                                            const act_t* __restrict__ w, int t, int n, int k,
                                            int klen) {
    __shared__ float red[SKINNY_MAX_WARPS - 1][NT * 4][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, c = lane & 3;
    const int row0 = blockIdx.x * 16;
    // Rows past n read the last row (finite, never stored).
    const int ra = min(row0 + g, n - 1), rb = min(row0 + g + 8, n - 1);
    const u64 kbeg = (u64)warp * klen + 8 * c;
    const uint4* pa = reinterpret_cast<const uint4*>(w + (u64)ra * k + kbeg);
    const uint4* pb = reinterpret_cast<const uint4*>(w + (u64)rb * k + kbeg);
    const uint4* px[NT];
    bool okx[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const int tok = nt * 8 + g;
        okx[nt] = tok < t;
        px[nt] = reinterpret_cast<const uint4*>(x + (u64)min(tok, t - 1) * k + kbeg);
    }
    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[nt][e] = 0.f;

    // Chunk j of a lane starts 32 * j elements (4 * j uint4) after its base.
    const int chunks = klen / 32;
    int j = 0;
    for (; j + SKINNY_UNROLL <= chunks; j += SKINNY_UNROLL) {
        uint4 wa[SKINNY_UNROLL], wb[SKINNY_UNROLL];
#pragma unroll
        for (int u = 0; u < SKINNY_UNROLL; u++) {
            wa[u] = ld_stream16(pa + 4 * (j + u));
            wb[u] = ld_stream16(pb + 4 * (j + u));
        }
#pragma unroll
        for (int u = 0; u < SKINNY_UNROLL; u++)
            skinny_chunk<NT>(acc, wa[u], wb[u], px, okx, 4 * (j + u));
    }
    for (; j < chunks; j++) {
        const uint4 wa = ld_stream16(pa + 4 * j), wb = ld_stream16(pb + 4 * j);
        skinny_chunk<NT>(acc, wa, wb, px, okx, 4 * j);
    }

    // Partial sums of warps 1.. through shared memory; warp 0 adds them and stores.
    const int nw = blockDim.x >> 5;
    if (warp > 0) {
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) red[warp - 1][nt * 4 + e][lane] = acc[nt][e];
    }
    __syncthreads();
    if (warp != 0) return;
    for (int v = 1; v < nw; v++) {
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[nt][e] += red[v - 1][nt * 4 + e][lane];
    }
    // C fragment: c0, c1 = rows g, tokens 2c, 2c + 1; c2, c3 = row g + 8, same tokens.
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int tok = nt * 8 + 2 * c + (e & 1);
            const int row = row0 + g + (e >> 1) * 8;
            if (tok < t && row < n) out[(u64)tok * n + row] = f2act(acc[nt][e]);
        }
    }
}

#define SKINNY_KERNEL(NT)                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * SKINNY_MAX_WARPS)                         \
        skinny_gemm_n##NT(act_t* out, const act_t* x, const act_t* w, int t, int n, int k,      \
                          int klen) {                                                           \
        skinny_impl<NT>(out, x, w, t, n, k, klen);                                              \
    }
// Up to 8, 16 and 32 tokens.
SKINNY_KERNEL(1)
SKINNY_KERNEL(2)
SKINNY_KERNEL(4)
