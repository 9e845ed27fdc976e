// Planned sampling: logits processing (allowed tokens, logit bias, min_tokens masks, penalties),
// sampling of the processed rows and raw logprobs, from a plan the host packs
// (crates/backend/src/cuda/sampling.rs; host formulas in crates/backend/src/sample_plan.rs).
// Uses gumbel / argmax_take / block_argmax_store / act_key from elementwise.cu.
//
// Per row r, PLAN_ROW_WORDS u32 words at rowp + r * PLAN_ROW_WORDS (layout shared with
// cuda/sampling.rs):
#define PLAN_ROW_WORDS 9
#define PR_REP 0       // repetition penalty (f32 bits)
#define PR_FREQ 1      // frequency penalty (f32 bits)
#define PR_PRES 2      // presence penalty (f32 bits)
#define PR_FLAGS 3     // bit 0: restricted (only allowed tokens can be chosen)
#define PR_FALLBACK 4  // the token when no value is above -inf (restricted rows), or PLAN_NONE
#define PR_TOPK 5      // top logprobs (<= PLAN_MAX_TOP), or PLAN_NONE: no logprobs
#define PR_BEGIN 6     // the row's entries are [begin, end)
#define PR_END 7
#define PR_SLOT 8      // row of the f32 processed buffer, or PLAN_NONE: sampled from the raw row
#define PLAN_NONE 0xffffffffu
// An entry is 3 words: token, meta (output count in bits 0..27, flags above), bias (f32 bits).
#define PE_ALLOWED (1u << 31)
#define PE_MIN_MASK (1u << 30)
#define PE_IN_PROMPT (1u << 29)
#define PE_BIAS (1u << 28)
#define PE_COUNT 0x0fffffffu
#define PLAN_MAX_TOP 20
// Output per row: token, logprob (f32 bits), rank, n, then n (token, logprob bits) pairs.
#define PLAN_OUT_WORDS (4 + 2 * PLAN_MAX_TOP)
// Top-logprob candidates gathered without ordering before a sort (more ties take an ordered scan).
#define PLAN_CANDS 64

__device__ __forceinline__ u32 f32_key(float f) {
    const u32 b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Sum over the block in a fixed order (deterministic for floating point). `red` holds 32 T.
template <typename T>
__device__ T plan_block_sum(T v, T* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    T r = 0;
    for (int w = 0; w < nw; w++) r += red[w];
    __syncthreads();
    return r;
}

// hist[bin] += w for every lane of the warp with bin < 256, one shared atomic per distinct bin.
// Logits crowd into a few bins, so per-lane 64-bit shared atomics (likely compare-and-swap loops)
// serialized: 19.6 ms for a 48 x 128256 plan on an H200, 2.0 ms aggregated. Every lane of the
// warp must call it.
__device__ __forceinline__ void plan_hist_add(u64* hist, u32 bin, u64 w) {
    const int lane = threadIdx.x & 31;
    u32 pending = __ballot_sync(0xffffffffu, bin < 256u);
    while (pending) {
        const int leader = __ffs(pending) - 1;
        const u32 b = __shfl_sync(0xffffffffu, bin, leader);
        const bool in = bin == b;
        u64 part = in ? w : 0;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
        if (lane == leader) atomicAdd(&hist[b], part);
        pending &= ~__ballot_sync(0xffffffffu, in);
    }
}

// The largest key K (8 * PASSES bits) such that the summed weight of the eligible elements
// with key >= K reaches `target`, or 0 if the total falls short, by PASSES 8-bit radix passes.
// `elem(c, key, v)` says whether element c is eligible and gives its key and value. Sets *ge to
// the weight of the eligible elements with key >= K. Every thread of the block must call it.
template <int PASSES, typename Elem, typename Weight>
__device__ u32 plan_radix(int cols, Elem elem, Weight weight, u64 target, u64* hist, u64* s,
                          u64* ge) {
    u32 prefix = 0;
    u64 above = 0;
#pragma unroll 1
    for (int pass = 0; pass < PASSES; pass++) {
        const int shift = 8 * (PASSES - 1 - pass);
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        // Whole-block steps, so every lane of a warp reaches plan_hist_add together.
        for (int base = 0; base < cols; base += blockDim.x) {
            const int c = base + threadIdx.x;
            u32 k = 0, bin = 256u;
            float v = 0.f;
            if (c < cols && elem(c, k, v) && (pass == 0 || (k >> (shift + 8)) == prefix))
                bin = (k >> shift) & 255u;
            plan_hist_add(hist, bin, bin < 256u ? weight(v) : 0);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            u64 cum = above;
            int digit = 0;
            for (int b = 255; b >= 0; b--) {
                if (cum + hist[b] >= target) {
                    digit = b;
                    break;
                }
                cum += hist[b];
            }
            // Weight strictly above the chosen digit, and at or above it.
            u64 a = above;
            for (int b = 255; b > digit; b--) a += hist[b];
            s[0] = ((u64)prefix << 8) | (u64)digit;
            s[1] = a;
            s[2] = a + hist[digit];
        }
        __syncthreads();
        prefix = (u32)s[0];
        above = s[1];
        *ge = s[2];
        __syncthreads();
    }
    return prefix;
}

// ---------------------------------------------------------------- processing
// grid = rows, block 1024. A row with a slot gets an f32 copy (restricted rows: all -inf) with
// its entries applied in the host sampler's order and operations (no fused multiply-adds, so
// the values equal the host's bit for bit). Entries must be unique per row; out-of-range tokens
// are skipped (the host rejects them before launching).
extern "C" __global__ void plan_process_rows(float* __restrict__ proc, const act_t* __restrict__ x,
                                             int cols, const u32* __restrict__ rowp,
                                             const u32* __restrict__ ent, u32 n_ent) {
    const u32* pr = rowp + (u64)blockIdx.x * PLAN_ROW_WORDS;
    const u32 slot = pr[PR_SLOT];
    if (slot == PLAN_NONE) return;
    const act_t* row = x + (u64)blockIdx.x * cols;
    float* o = proc + (u64)slot * cols;
    const bool restricted = (pr[PR_FLAGS] & 1u) != 0;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        o[c] = restricted ? -RV_INF : act2f(row[c]);
    __syncthreads();
    const float rep = __uint_as_float(pr[PR_REP]);
    const float freq = __uint_as_float(pr[PR_FREQ]);
    const float pres = __uint_as_float(pr[PR_PRES]);
    const u32 end = min(pr[PR_END], n_ent);
    for (u32 i = pr[PR_BEGIN] + threadIdx.x; i < end; i += blockDim.x) {
        const u32* e = ent + (u64)i * 3;
        const u32 tok = e[0], meta = e[1];
        if (tok >= (u32)cols || (restricted && !(meta & PE_ALLOWED))) continue;
        float v = act2f(row[tok]);
        if (meta & PE_BIAS) v = __fadd_rn(v, __uint_as_float(e[2]));
        if (meta & PE_MIN_MASK) v = -RV_INF;
        const u32 count = meta & PE_COUNT;
        if (rep != 1.f && ((meta & PE_IN_PROMPT) || count > 0))
            v = v > 0.f ? __fdiv_rn(v, rep) : __fmul_rn(v, rep);
        if ((freq != 0.f || pres != 0.f) && count > 0) {
            v = __fsub_rn(v, __fmul_rn(freq, (float)count));
            v = __fsub_rn(v, pres);
        }
        o[tok] = v;
    }
}

// ---------------------------------------------------------------- sampling
// sample_rows_bf16's rule over f32 values (load(c) gives value c), NaN never kept: greedy rows
// and rows whose maximum is not finite take the first maximum (the fallback when nothing is
// above -inf); sampled rows keep top-k (ties kept), min-p, top-p (40-bit fixed-point mass) and
// draw argmax(v * inv_temp + G_c). On unprocessed bf16 rows it picks what sample_rows_bf16 picks.
template <typename Load>
__device__ void plan_sample_row(u32* out, Load load, int cols, float it, float top_p,
                                float min_p, int top_k, u64 seed, u32 fallback) {
    __shared__ u64 hist[256];
    __shared__ u64 s[3];
    __shared__ float red[32];
    __shared__ u64 red64[32];
    float lm = -RV_INF;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) lm = fmaxf(lm, load(c));
    const float m = block_max(lm, red);
    if (!(m > -RV_INF) && fallback != PLAN_NONE) {
        if (threadIdx.x == 0) *out = fallback;
        return;
    }
    const bool sampled = it != 0.f && m > -RV_INF && m < RV_INF;
    u32 kmin = 0;
    float vmin = -RV_INF;
    if (sampled) {
        u64 ge;
        auto any = [&](int c, u32& k, float& v) {
            v = load(c);
            k = f32_key(v);
            return !isnan(v);
        };
        if (top_k > 0 && top_k < cols)
            kmin = plan_radix<4>(cols, any, [](float) { return (u64)1; }, (u64)top_k, hist, s, &ge);
        if (min_p > 0.f) vmin = m + logf(min_p) / it;
        if (top_p < 1.f) {
            const u32 k0 = kmin;
            const float v0 = vmin;
            auto elig = [&](int c, u32& k, float& v) {
                v = load(c);
                k = f32_key(v);
                return !isnan(v) && k >= k0 && v >= v0;
            };
            auto mass = [=](float v) {
                const float w = __expf((v - m) * it);  // in (0, 1]
                return (u64)(w * 1099511627776.0f);   // 2^40
            };
            u64 local = 0;
            for (int c = threadIdx.x; c < cols; c += blockDim.x) {
                u32 k;
                float v;
                if (elig(c, k, v)) local += mass(v);
            }
            const u64 total = plan_block_sum(local, red64);
            const u64 target = (u64)((double)total * (double)top_p);
            const u32 kp = plan_radix<4>(cols, elig, mass, target > 0 ? target : 1, hist, s, &ge);
            kmin = kmin > kp ? kmin : kp;
        }
    }
    float best = -RV_INF;
    int idx = 0x7fffffff;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = load(c);
        if (sampled) {
            if (isnan(v) || f32_key(v) < kmin || v < vmin) continue;
            v = v * it + gumbel(seed, (u64)c);
        }
        argmax_take(v, c, best, idx);
    }
    block_argmax_store(best, idx, out);
}

// grid = rows, block 1024: ids[r] from the processed row (slot) or the raw bf16 row, with the
// sampling parameters of sample_rows_bf16 (rp: 1/temperature, top_p, min_p, top_k; seeds).
extern "C" __global__ void plan_sample_rows(u32* __restrict__ ids, const act_t* __restrict__ x,
                                            const float* __restrict__ proc, int cols,
                                            const u32* __restrict__ rowp,
                                            const float* __restrict__ rp,
                                            const u64* __restrict__ seeds) {
    const u32 r = blockIdx.x;
    const u32* pr = rowp + (u64)r * PLAN_ROW_WORDS;
    const u32 slot = pr[PR_SLOT];
    const float it = rp[4 * r], top_p = rp[4 * r + 1], min_p = rp[4 * r + 2];
    const int top_k = (int)rp[4 * r + 3];
    if (slot == PLAN_NONE) {
        const act_t* row = x + (u64)r * cols;
        plan_sample_row(ids + r, [=](int c) { return act2f(row[c]); }, cols, it, top_p,
                        min_p, top_k, seeds[r], pr[PR_FALLBACK]);
    } else {
        const float* row = proc + (u64)slot * cols;
        plan_sample_row(ids + r, [=](int c) { return row[c]; }, cols, it, top_p, min_p, top_k,
                        seeds[r], pr[PR_FALLBACK]);
    }
}

// ---------------------------------------------------------------- logprobs
// grid = rows, block 1024. Writes the row's output words: the sampled token ids[r], and for rows
// with logprobs its raw logprob (log-softmax of the raw bf16 row, sum in f64), rank (1 + the
// number of strictly greater raw logits) and the top k raw logprobs (descending, ties: lower id
// first; NaN never ranked among them).
extern "C" __global__ void plan_logprobs(u32* __restrict__ out, const act_t* __restrict__ x,
                                         int cols, const u32* __restrict__ ids,
                                         const u32* __restrict__ rowp) {
    __shared__ float red[32];
    __shared__ double redd[32];
    __shared__ u64 red64[32];
    __shared__ u64 hist[256];
    __shared__ u64 s[3];
    __shared__ u32 cand_id[PLAN_CANDS];
    __shared__ u32 cand_key[PLAN_CANDS];
    __shared__ u32 n_cand;
    __shared__ u32 warp_cnt[32];
    __shared__ u32 taken;
    const u32* pr = rowp + (u64)blockIdx.x * PLAN_ROW_WORDS;
    u32* o = out + (u64)blockIdx.x * PLAN_OUT_WORDS;
    const u32 tok = ids[blockIdx.x];
    const u32 k = pr[PR_TOPK];
    if (k == PLAN_NONE) {
        if (threadIdx.x == 0) {
            o[0] = tok;
            o[1] = 0x7fc00000u;  // NaN
            o[2] = 0;
            o[3] = 0;
        }
        return;
    }
    const act_t* row = x + (u64)blockIdx.x * cols;
    float lm = -RV_INF;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) lm = fmaxf(lm, act2f(row[c]));
    const float m = block_max(lm, red);
    double lse = (double)m;
    if (isfinite(m)) {
        double acc = 0.0;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            const float v = act2f(row[c]);
            if (!isnan(v)) acc += (double)expf(v - m);
        }
        lse += log(plan_block_sum(acc, redd));
    }
    const float vt = tok < (u32)cols ? act2f(row[tok]) : __int_as_float(0x7fc00000);
    u64 greater = 0;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) greater += act2f(row[c]) > vt;
    greater = plan_block_sum(greater, red64);
    const int kk = min(min((int)k, PLAN_MAX_TOP), cols);
    if (threadIdx.x == 0) {
        o[0] = tok;
        o[1] = __float_as_uint((float)((double)vt - lse));
        o[2] = (u32)min(greater + 1, (u64)0xffffffffu);
        o[3] = 0;
        n_cand = 0;
    }
    if (kk <= 0) return;
    auto any = [&](int c, u32& key, float& v) {
        const act_t b = row[c];
        v = act2f(b);
        key = act_key(b);
        return !isnan(v);
    };
    u64 ge;
    const u32 t = plan_radix<2>(cols, any, [](float) { return (u64)1; }, (u64)kk, hist, s, &ge);
    // n_cand = 0 happened before the radix's barriers.
    const bool all_ties = ge <= PLAN_CANDS;
    // Keys above t (fewer than kk of them), and every tie when they fit: order comes from a sort.
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        u32 key;
        float v;
        if (!any(c, key, v) || key < t || (key == t && !all_ties)) continue;
        const u32 p = atomicAdd(&n_cand, 1u);
        if (p < PLAN_CANDS) {
            cand_id[p] = (u32)c;
            cand_key[p] = key;
        }
    }
    __syncthreads();
    u32 n = min(n_cand, (u32)PLAN_CANDS);
    if (!all_ties) {
        // Many ties at t: the lowest ids among them, by an ordered block-wide scan.
        const u32 need = (u32)kk > n ? (u32)kk - n : 0;
        if (threadIdx.x == 0) taken = 0;
        __syncthreads();
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
        for (int base = 0; base < cols && taken < need; base += blockDim.x) {
            const int c = base + threadIdx.x;
            u32 key = 0;
            float v;
            const bool tie = c < cols && any(c, key, v) && key == t;
            const u32 ballot = __ballot_sync(0xffffffffu, tie);
            if (lane == 0) warp_cnt[warp] = __popc(ballot);
            __syncthreads();
            u32 off = 0, total = 0;
            for (int w = 0; w < nw; w++) {
                off += w < warp ? warp_cnt[w] : 0;
                total += warp_cnt[w];
            }
            const u32 pos = taken + off + __popc(ballot & ((1u << lane) - 1u));
            if (tie && pos < need) {
                cand_id[n + pos] = (u32)c;
                cand_key[n + pos] = t;
            }
            __syncthreads();
            if (threadIdx.x == 0) taken += total;
            __syncthreads();
        }
        n += min(taken, need);
    }
    if (threadIdx.x == 0) {
        // Insertion sort: key descending, id ascending.
        for (u32 i = 1; i < n; i++) {
            const u32 ki = cand_key[i], ii = cand_id[i];
            int j = (int)i - 1;
            while (j >= 0 && (cand_key[j] < ki || (cand_key[j] == ki && cand_id[j] > ii))) {
                cand_key[j + 1] = cand_key[j];
                cand_id[j + 1] = cand_id[j];
                j--;
            }
            cand_key[j + 1] = ki;
            cand_id[j + 1] = ii;
        }
        const u32 w = min(n, (u32)kk);
        for (u32 i = 0; i < w; i++) {
            const float v = act2f(row[cand_id[i]]);
            o[4 + 2 * i] = cand_id[i];
            o[5 + 2 * i] = __float_as_uint((float)((double)v - lse));
        }
        o[3] = w;
    }
}
