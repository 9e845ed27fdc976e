// GELU activations: plain gelu(x) (GPT-2 / GPT-NeoX / Falcon MLPs) and the gated gelu(gate) * up
// (GeGLU: Gemma, ...), from separate tensors or a fused [gate | up] projection. Core module only.
//
// `tanh_approx` picks the form: 0 = HF's `gelu` (exact: 0.5 x (1 + erf(x / sqrt 2))), 1 = HF's
// `gelu_pytorch_tanh` / `gelu_new` (0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))).
// f32 math, act_t in and out, 16-byte accesses when the length allows (as silu_mul).

template <bool TANH>
__device__ __forceinline__ float gelu_f(float x) {
    if (TANH) {
        // 0.5 (1 + tanh(u)) == 1 / (1 + e^(-2u)): the same value without the cancellation of
        // 1 + tanh(u) for large negative x (e^(-2u) -> inf gives -0, not a NaN).
        const float u = 0.7978845608028654f * fmaf(0.044715f * x, x * x, x);
        return x / (1.0f + expf(-2.0f * u));
    }
    // 1 + erf(z) == erfc(-z): accurate in the negative tail, where 1 + erf(z) cancels.
    return 0.5f * x * erfcf(-0.7071067811865476f * x);
}

// out[i] = gelu(a[i]) * (b ? b[i] : 1) for i < n.
template <bool TANH>
__device__ __forceinline__ void gelu_mul_impl(act_t* __restrict__ out, const act_t* __restrict__ a,
                                              const act_t* __restrict__ b, u64 n) {
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
            for (int e = 0; e < 8; e++) g[e] = gelu_f<TANH>(g[e]) * u[e];
            ((act8*)out)[i] = f32_to_act8(g);
        }
    } else {
        for (; i < n; i += stride)
            out[i] = f2act(gelu_f<TANH>(act2f(a[i])) * (b ? act2f(b[i]) : 1.f));
    }
}

// out = gelu(x) (n values).
extern "C" __global__ void gelu_bf16(act_t* __restrict__ out, const act_t* __restrict__ x, u64 n,
                                     int tanh_approx) {
    if (tanh_approx)
        gelu_mul_impl<true>(out, x, nullptr, n);
    else
        gelu_mul_impl<false>(out, x, nullptr, n);
}

// out = gelu(gate) * up (n values).
extern "C" __global__ void gelu_mul_bf16(act_t* __restrict__ out, const act_t* __restrict__ gate,
                                         const act_t* __restrict__ up, u64 n, int tanh_approx) {
    if (tanh_approx)
        gelu_mul_impl<true>(out, gate, up, n);
    else
        gelu_mul_impl<false>(out, gate, up, n);
}

// out [T, f] = gelu(gu[:, :f]) * gu[:, f:] for a fused gate/up projection gu [T, 2f].
template <bool TANH>
__device__ __forceinline__ void gelu_mul_fused_impl(act_t* __restrict__ out,
                                                    const act_t* __restrict__ gu, u64 rows, u64 f) {
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
            for (int e = 0; e < 8; e++) g[e] = gelu_f<TANH>(g[e]) * u[e];
            ((act8*)(out + r * f))[c] = f32_to_act8(g);
        }
    } else {
        for (; i < rows * f; i += stride) {
            const u64 r = i / f, c = i % f;
            out[i] = f2act(gelu_f<TANH>(act2f(gu[r * 2 * f + c])) * act2f(gu[r * 2 * f + f + c]));
        }
    }
}

extern "C" __global__ void gelu_mul_fused_bf16(act_t* __restrict__ out, const act_t* __restrict__ gu,
                                               u64 rows, u64 f, int tanh_approx) {
    if (tanh_approx)
        gelu_mul_fused_impl<true>(out, gu, rows, f);
    else
        gelu_mul_fused_impl<false>(out, gu, rows, f);
}
