// GELU activations: plain gelu(x) (GPT-2 / GPT-NeoX / Falcon MLPs) and the gated gelu(gate) * up
// (GeGLU: Gemma, ...), from separate tensors or a fused [gate | up] projection. Core module only.
//
// `tanh_approx` picks the form: 0 = HF's `gelu` (exact: 0.5 x (1 + erf(x / sqrt 2))), 1 = HF's
// `gelu_pytorch_tanh` / `gelu_new` (0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))).
// The loops are elementwise.cu's act_mul_impl / act_mul_fused_impl (as for SiLU).

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

template <bool TANH>
struct GeluAct {
    __device__ __forceinline__ float operator()(float x) const { return gelu_f<TANH>(x); }
};

// out[i] = gelu(a[i]) * (b ? b[i] : 1) for i < n.
template <bool TANH>
__device__ __forceinline__ void gelu_mul_impl(act_t* __restrict__ out, const act_t* __restrict__ a,
                                              const act_t* __restrict__ b, u64 n) {
    act_mul_impl(out, a, b, n, GeluAct<TANH>{});
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
    act_mul_fused_impl(out, gu, rows, f, GeluAct<TANH>{});
}

extern "C" __global__ void gelu_mul_fused_bf16(act_t* __restrict__ out, const act_t* __restrict__ gu,
                                               u64 rows, u64 f, int tanh_approx) {
    if (tanh_approx)
        gelu_mul_fused_impl<true>(out, gu, rows, f);
    else
        gelu_mul_fused_impl<false>(out, gu, rows, f);
}
