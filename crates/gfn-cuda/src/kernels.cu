// gfn-cuda kernels. Each has a CPU reference in `ops.rs` (same arithmetic, same order);
// tests/kernels.rs compares the two on fresh random inputs with poisoned outputs.
//
// Trajectory buffers are t-major `[T+1, B, W]` u32 rows: `W = S + 3` with the state in columns
// `0..S` (0 = empty slot for bit sequences and binary vectors, value + 1 otherwise; coordinates
// for the hypergrid), then the number of steps taken, the done flag, and the action taken from
// this state (`NO_ACTION` when none).

#include <stdint.h>

#define NO_ACTION 0xFFFFFFFFu
#define ENV_HYPERGRID 0
#define ENV_BINARY 1
#define ENV_BITSEQ_APPEND 2
#define ENV_BITSEQ_FILL 3

struct EnvP {
    int kind;       // ENV_*
    int sdim;       // S: state width
    int n_actions;  // A
    int n_back;     // backward actions
    int height;     // hypergrid H
    int k;          // bit-sequence word bits
    int vocab;      // bit-sequence 2^k
    int n_aux;      // rows of the reward's auxiliary table (modes)
    float r0, r1, r2;  // hypergrid reward
    float scale;       // bit-sequence reward scale
};

__device__ __forceinline__ int steps_col(const EnvP& e) { return e.sdim; }
__device__ __forceinline__ int done_col(const EnvP& e) { return e.sdim + 1; }
__device__ __forceinline__ int act_col(const EnvP& e) { return e.sdim + 2; }

// Is forward action `a` allowed from `s` (a state that is not done)?
__device__ bool fwd_allowed(const EnvP& e, const uint32_t* s, int a) {
    switch (e.kind) {
    case ENV_HYPERGRID:
        return a == e.sdim || s[a] < (uint32_t)(e.height - 1);
    case ENV_BINARY:
        return s[a >> 1] == 0;
    case ENV_BITSEQ_APPEND:
        return s[steps_col(e)] < (uint32_t)e.sdim;
    default:  // fill
        return s[a / e.vocab] == 0;
    }
}

__device__ bool bwd_allowed(const EnvP& e, const uint32_t* s, int a) {
    switch (e.kind) {
    case ENV_HYPERGRID:
        return s[a] > 0;
    case ENV_BINARY:
    case ENV_BITSEQ_FILL:
        return s[a] != 0;
    default:  // append: remove the last word
        return s[steps_col(e)] > 0;
    }
}

// The backward action undoing forward action `a` (NO_ACTION for the exit).
__device__ uint32_t bwd_action(const EnvP& e, uint32_t a) {
    if (a == NO_ACTION) return NO_ACTION;
    switch (e.kind) {
    case ENV_HYPERGRID:
        return a == (uint32_t)e.sdim ? NO_ACTION : a;
    case ENV_BINARY:
        return a >> 1;
    case ENV_BITSEQ_APPEND:
        return 0;
    default:
        return a / (uint32_t)e.vocab;
    }
}

// Apply forward action `a` to row `s` in place (state, steps, done).
__device__ void apply_step(const EnvP& e, uint32_t* s, uint32_t a) {
    uint32_t steps = s[steps_col(e)] + 1;
    s[steps_col(e)] = steps;
    switch (e.kind) {
    case ENV_HYPERGRID:
        if (a == (uint32_t)e.sdim) s[done_col(e)] = 1; else s[a] += 1;
        return;
    case ENV_BINARY:
        s[a >> 1] = (a & 1) + 1;
        break;
    case ENV_BITSEQ_APPEND:
        s[steps - 1] = a + 1;
        break;
    default:
        s[a / e.vocab] = a % e.vocab + 1;
        break;
    }
    if (steps == (uint32_t)e.sdim) s[done_col(e)] = 1;
}

__device__ float feature(const EnvP& e, const uint32_t* s, int f) {
    switch (e.kind) {
    case ENV_HYPERGRID:
        return s[f / e.height] == (uint32_t)(f % e.height) ? 1.0f : 0.0f;
    case ENV_BINARY:
        return (float)s[f] - 1.0f;
    default: {
        int b = f >> 1;
        uint32_t v = s[b / e.k];
        if (v == 0) return 0.0f;
        uint32_t bit = ((v - 1) >> (e.k - 1 - b % e.k)) & 1u;
        return (f & 1) ? (float)(1u - bit) : (float)bit;
    }
    }
}

extern "C" __global__ void gfn_featurize(EnvP e, const uint32_t* states, int w, int n, int f_dim, float* out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * f_dim) return;
    int r = (int)(i / f_dim), f = (int)(i % f_dim);
    out[i] = feature(e, states + (long long)r * w, f);
}

extern "C" __global__ void gfn_forward_mask(EnvP e, const uint32_t* states, int w, int n, uint8_t* out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * e.n_actions) return;
    int r = (int)(i / e.n_actions), a = (int)(i % e.n_actions);
    const uint32_t* s = states + (long long)r * w;
    out[i] = (s[done_col(e)] == 0 && fwd_allowed(e, s, a)) ? 1 : 0;
}

extern "C" __global__ void gfn_backward_mask(EnvP e, const uint32_t* states, int w, int n, uint8_t* out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * e.n_back) return;
    int r = (int)(i / e.n_back), a = (int)(i % e.n_back);
    out[i] = bwd_allowed(e, states + (long long)r * w, a) ? 1 : 0;
}

// ---- counter-based RNG: Philox4x32-10 (Salmon et al. 2011) ----
// key = (seed lo, seed hi ^ iteration hi), counter = (row, t, iteration lo, slot).

__device__ __forceinline__ void philox_round(uint32_t* c, uint32_t k0, uint32_t k1) {
    uint32_t lo0 = 0xD2511F53u * c[0], hi0 = __umulhi(0xD2511F53u, c[0]);
    uint32_t lo1 = 0xCD9E8D57u * c[2], hi1 = __umulhi(0xCD9E8D57u, c[2]);
    uint32_t n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
    c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
}

// A uniform double in (0, 1) with 53 random bits (never 0, so −log(−log u) is finite).
__device__ double philox_uniform(unsigned long long seed, uint32_t row, uint32_t t, unsigned long long iteration,
                                 uint32_t slot) {
    uint32_t c[4] = {row, t, (uint32_t)iteration, slot};
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32) ^ (uint32_t)(iteration >> 32);
    for (int r = 0; r < 10; ++r) {
        philox_round(c, k0, k1);
        k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
    }
    unsigned long long hi = c[0] >> 5, lo = c[1] >> 6;
    return ((double)(hi * 67108864ull + lo) + 0.5) * (1.0 / 9007199254740992.0);
}

struct SampleP {
    unsigned long long seed;
    unsigned long long iteration;
    double epsilon;
    double inv_temp;
};

// One warp draws the action of row `row` at step `t` from the masked softmax of
// `logits / temperature`, mixed with ε-uniform over the allowed actions: with the uniform of
// slot A below ε, the ⌊u·n⌋-th allowed action (slot A+1); otherwise Gumbel-max,
// argmax_a (l_a/T − log(−log u_a)) with u_a the uniform of slot a (ties: the smaller index).
// Every lane returns the action (NO_ACTION if none is allowed).
__device__ uint32_t warp_sample(const EnvP& e, const uint32_t* s, const float* l, uint32_t row, int t,
                                const SampleP& p) {
    int lane = threadIdx.x & 31;
    int n_valid = 0;
    for (int base = 0; base < e.n_actions; base += 32) {
        int a = base + lane;
        unsigned ok = __ballot_sync(0xffffffffu, a < e.n_actions && fwd_allowed(e, s, a));
        n_valid += __popc(ok);
    }
    if (n_valid == 0) return NO_ACTION;
    if (p.epsilon > 0.0) {
        double ue = philox_uniform(p.seed, row, (uint32_t)t, p.iteration, (uint32_t)e.n_actions);
        if (ue < p.epsilon) {
            double uk = philox_uniform(p.seed, row, (uint32_t)t, p.iteration, (uint32_t)e.n_actions + 1);
            int k = (int)(uk * (double)n_valid);
            k = k < n_valid ? k : n_valid - 1;
            for (int base = 0; base < e.n_actions; base += 32) {
                int a = base + lane;
                unsigned ok = __ballot_sync(0xffffffffu, a < e.n_actions && fwd_allowed(e, s, a));
                int c = __popc(ok);
                if (k < c) {
                    // the (k+1)-th set bit of ok
                    for (int j = 0; j < 32; ++j) {
                        if ((ok >> j) & 1u) {
                            if (k == 0) return (uint32_t)(base + j);
                            --k;
                        }
                    }
                }
                k -= c;
            }
        }
    }
    double best = -INFINITY;
    uint32_t arg = NO_ACTION;
    for (int a = lane; a < e.n_actions; a += 32) {
        if (!fwd_allowed(e, s, a)) continue;
        double u = philox_uniform(p.seed, row, (uint32_t)t, p.iteration, (uint32_t)a);
        double v = (double)l[a] * p.inv_temp - log(-log(u));
        if (v > best) { best = v; arg = (uint32_t)a; }
    }
    for (int off = 16; off > 0; off >>= 1) {
        double ob = __shfl_xor_sync(0xffffffffu, best, off);
        uint32_t oa = __shfl_xor_sync(0xffffffffu, arg, off);
        if (ob > best || (ob == best && oa < arg)) { best = ob; arg = oa; }
    }
    return arg;
}

// Copy row t → t+1 (action NO_ACTION), then record `chosen` in row t and apply it to row t+1.
// Lane 0 of the warp writes.
__device__ void warp_record(const EnvP& e, uint32_t* s, uint32_t* nx, int w, uint32_t chosen, bool was_done) {
    int lane = threadIdx.x & 31;
    for (int j = lane; j < w; j += 32) nx[j] = s[j];
    __syncwarp();
    if (lane == 0) {
        nx[act_col(e)] = NO_ACTION;
        s[act_col(e)] = was_done ? NO_ACTION : chosen;
        if (!was_done) {
            if (chosen == NO_ACTION) nx[done_col(e)] = 1;
            else apply_step(e, nx, chosen);
        }
    }
    __syncwarp();
}

// One rollout step from given logits: one warp per row b reads traj[t, b], samples with
// `warp_sample` from logits[b] (row stride `logit_stride`, P_F first), records the action and
// writes traj[t+1, b]. Done rows are copied with NO_ACTION.
extern "C" __global__ void gfn_sample_step(EnvP e, uint32_t* traj, int w, int batch, int t, const float* logits,
                                           int logit_stride, SampleP p) {
    int b = (int)(((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    if (b >= batch) return;
    uint32_t* s = traj + ((long long)t * batch + b) * w;
    uint32_t* nx = traj + ((long long)(t + 1) * batch + b) * w;
    bool was_done = s[done_col(e)] != 0;
    uint32_t chosen = was_done ? NO_ACTION : warp_sample(e, s, logits + (long long)b * logit_stride, (uint32_t)b, t, p);
    warp_record(e, s, nx, w, chosen, was_done);
}

#define MAX_LAYERS 4
struct MlpP {
    const float* weight[MAX_LAYERS];  // [in, out] row-major
    const float* bias[MAX_LAYERS];
    int dims[MAX_LAYERS + 1];
    int n_layers;
};

// The fused rollout step: for R rows per block (R = 1, 2, 4, 8 or 16, one kernel each), features → MLP
// (ReLU between layers; only the first A outputs of the last layer, the P_F logits) → warp_sample →
// record. Activations live in shared memory (2 · R · ld floats, ld = the widest layer rounded up to 4);
// every product is an fmaf chain over the input index in order, starting from the bias (the CPU
// reference does the same with mul_add), so the logits do not depend on R. Each thread owns one
// output column at a time and issues the weight loads of ROLL_U inputs before their products (memory-level
// parallelism; the weights stream from L2). A block whose rows are all done only copies them.
#define ROLL_U 32
template <int R>
__device__ __forceinline__ void rollout_step_impl(const EnvP& e, uint32_t* traj, int w, int batch, int t,
                                                  const MlpP& net, int ld, const SampleP& p) {
    extern __shared__ float4 smem4[];  // float4: 16-byte aligned for the float4 reads below
    __shared__ int any_live;
    float* smem = reinterpret_cast<float*>(smem4);
    float* act0 = smem;
    float* act1 = smem + R * ld;
    int r0 = blockIdx.x * R;
    int nrows = batch - r0 < R ? batch - r0 : R;
    if (nrows <= 0) return;
    const uint32_t* cur = traj + (long long)t * batch * w;
    int warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    if (threadIdx.x == 0) any_live = 0;
    __syncthreads();
    if (threadIdx.x < nrows && cur[(long long)(r0 + threadIdx.x) * w + done_col(e)] == 0) any_live = 1;
    __syncthreads();
    if (!any_live) {
        for (int r = warp; r < nrows; r += n_warps) {
            int b = r0 + r;
            uint32_t* s = traj + ((long long)t * batch + b) * w;
            uint32_t* nx = traj + ((long long)(t + 1) * batch + b) * w;
            warp_record(e, s, nx, w, NO_ACTION, true);
        }
        return;
    }
    int f_dim = net.dims[0];
    for (int i = threadIdx.x; i < R * ld; i += blockDim.x) {
        int r = i / ld, f = i % ld;
        act0[i] = (r < nrows && f < f_dim) ? feature(e, cur + (long long)(r0 + r) * w, f) : 0.0f;
    }
    __syncthreads();
    float* in = act0;
    float* out = act1;
    for (int k = 0; k < net.n_layers; ++k) {
        int din = net.dims[k];
        bool last = k == net.n_layers - 1;
        int dout = last ? e.n_actions : net.dims[k + 1];
        int wout = net.dims[k + 1];
        const float* __restrict__ W = net.weight[k];
        const float* __restrict__ B = net.bias[k];
        for (int o = threadIdx.x; o < dout; o += blockDim.x) {
            float acc[R];
            float bo = __ldg(B + o);
#pragma unroll
            for (int r = 0; r < R; ++r) acc[r] = bo;
            const float* __restrict__ wc = W + o;
            int i = 0;
            for (; i + ROLL_U <= din; i += ROLL_U) {
                float wv[ROLL_U];
#pragma unroll
                for (int u = 0; u < ROLL_U; ++u) wv[u] = __ldg(wc + (long long)(i + u) * wout);
#pragma unroll
                for (int u = 0; u < ROLL_U; u += 4) {
#pragma unroll
                    for (int r = 0; r < R; ++r) {
                        float4 x = *reinterpret_cast<const float4*>(in + r * ld + i + u);
                        acc[r] = fmaf(x.x, wv[u], acc[r]);
                        acc[r] = fmaf(x.y, wv[u + 1], acc[r]);
                        acc[r] = fmaf(x.z, wv[u + 2], acc[r]);
                        acc[r] = fmaf(x.w, wv[u + 3], acc[r]);
                    }
                }
            }
            for (; i < din; ++i) {
                float wv = __ldg(wc + (long long)i * wout);
#pragma unroll
                for (int r = 0; r < R; ++r) acc[r] = fmaf(in[r * ld + i], wv, acc[r]);
            }
#pragma unroll
            for (int r = 0; r < R; ++r) out[r * ld + o] = (!last && acc[r] < 0.0f) ? 0.0f : acc[r];
        }
        __syncthreads();
        float* tmp = in; in = out; out = tmp;
    }
    // `in` holds the logits. One warp per row samples and records.
    for (int r = warp; r < nrows; r += n_warps) {
        int b = r0 + r;
        uint32_t* s = traj + ((long long)t * batch + b) * w;
        uint32_t* nx = traj + ((long long)(t + 1) * batch + b) * w;
        bool was_done = s[done_col(e)] != 0;
        uint32_t chosen = was_done ? NO_ACTION : warp_sample(e, s, in + r * ld, (uint32_t)b, t, p);
        warp_record(e, s, nx, w, chosen, was_done);
    }
}

#define ROLLOUT_KERNEL(R)                                                                                      \
    extern "C" __global__ void gfn_rollout_step_r##R(EnvP e, uint32_t* traj, int w, int batch, int t, MlpP net, \
                                                     int ld, SampleP p) {                                     \
        rollout_step_impl<R>(e, traj, w, batch, t, net, ld, p);                                                \
    }
ROLLOUT_KERNEL(1)
ROLLOUT_KERNEL(2)
ROLLOUT_KERNEL(4)
ROLLOUT_KERNEL(8)
ROLLOUT_KERNEL(16)

// Max and normaliser of the allowed logits of row l (one warp; lanes stride over the actions).
__device__ void warp_max_z(const float* l, const uint8_t* mk, int a_dim, float* m_out, float* z_out) {
    int lane = threadIdx.x & 31;
    float m = -INFINITY;
    for (int j = lane; j < a_dim; j += 32) if (mk[j]) m = fmaxf(m, l[j]);
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    float z = 0.0f;
    for (int j = lane; j < a_dim; j += 32) if (mk[j]) z += expf(l[j] - m);
    for (int off = 16; off > 0; off >>= 1) z += __shfl_xor_sync(0xffffffffu, z, off);
    *m_out = m;
    *z_out = z;
}

// out[r] = log softmax(logits[r] | mask[r])[act[r]], 0 where act[r] is NO_ACTION. One warp per row.
extern "C" __global__ void gfn_log_softmax_gather(const float* logits, const uint8_t* mask, const uint32_t* act, int n,
                                                  int a_dim, float* out) {
    int r = (int)(((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    if (r >= n) return;
    uint32_t a = act[r];
    if (a == NO_ACTION) { if ((threadIdx.x & 31) == 0) out[r] = 0.0f; return; }
    const float* l = logits + (long long)r * a_dim;
    float m, z;
    warp_max_z(l, mask + (long long)r * a_dim, a_dim, &m, &z);
    if ((threadIdx.x & 31) == 0) out[r] = l[a] - m - logf(z);
}

// d out[r] / d logits[r, j] = 1[j = act] − softmax_j on allowed j, 0 elsewhere (and on rows
// without an action). One warp per row, coalesced writes.
extern "C" __global__ void gfn_log_softmax_gather_jacobian(const float* logits, const uint8_t* mask,
                                                           const uint32_t* act, int n, int a_dim, float* out) {
    int r = (int)(((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    if (r >= n) return;
    int lane = threadIdx.x & 31;
    uint32_t a = act[r];
    float* o = out + (long long)r * a_dim;
    if (a == NO_ACTION) { for (int j = lane; j < a_dim; j += 32) o[j] = 0.0f; return; }
    const float* l = logits + (long long)r * a_dim;
    const uint8_t* mk = mask + (long long)r * a_dim;
    float m, z;
    warp_max_z(l, mk, a_dim, &m, &z);
    for (int j = lane; j < a_dim; j += 32) {
        float p = mk[j] ? expf(l[j] - m) / z : 0.0f;
        o[j] = ((uint32_t)j == a ? 1.0f : 0.0f) - p;
    }
}

// out[t, b] = the backward action undoing the step t → t+1 of row b.
extern "C" __global__ void gfn_backward_actions(EnvP e, const uint32_t* traj, int w, int steps, int batch,
                                                uint32_t* out) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= steps * batch) return;
    out[i] = bwd_action(e, traj[(long long)i * w + act_col(e)]);
}

// out[t, b] = log P_B(s_t | s_{t+1}) for the uniform backward policy: −log #parents(s_{t+1}),
// 0 for the exit step and past the end.
extern "C" __global__ void gfn_uniform_log_pb(EnvP e, const uint32_t* traj, int w, int steps, int batch, float* out) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= steps * batch) return;
    uint32_t ba = bwd_action(e, traj[(long long)i * w + act_col(e)]);
    if (ba == NO_ACTION) { out[i] = 0.0f; return; }
    const uint32_t* nx = traj + ((long long)i + batch) * w;
    int c = 0;
    for (int a = 0; a < e.n_back; ++a) c += bwd_allowed(e, nx, a) ? 1 : 0;
    out[i] = -(float)log((double)c);
}

// log R of each row of `states` (complete objects). aux: the binary model's coupling J [S, S]
// (log R = sᵀJs with spins s = 2x − 1), or the bit-sequence modes [n_aux, S] as word values.
extern "C" __global__ void gfn_log_reward(EnvP e, const uint32_t* states, int w, int n, const float* aux, float* out) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    const uint32_t* s = states + (long long)r * w;
    switch (e.kind) {
    case ENV_HYPERGRID: {
        bool outer = true, band = true;
        int h1 = e.height - 1;
        for (int i = 0; i < e.sdim; ++i) {
            int c = 2 * (int)s[i] - h1;
            c = c < 0 ? -c : c;
            outer = outer && (2 * c > h1);
            band = band && (6 * h1 < 10 * c) && (10 * c < 8 * h1);
        }
        double rw = (double)e.r0 + (outer ? (double)e.r1 : 0.0) + (band ? (double)e.r2 : 0.0);
        out[r] = (float)log(rw);
        return;
    }
    case ENV_BINARY: {
        double acc = 0.0;
        for (int i = 0; i < e.sdim; ++i) {
            double si = s[i] == 2 ? 1.0 : -1.0;
            double row = 0.0;
            for (int j = 0; j < e.sdim; ++j) row += (double)aux[(long long)i * e.sdim + j] * (s[j] == 2 ? 1.0 : -1.0);
            acc += si * row;
        }
        out[r] = (float)acc;
        return;
    }
    default: {
        int best = 1 << 30;
        for (int m = 0; m < e.n_aux; ++m) {
            int d = 0;
            for (int i = 0; i < e.sdim; ++i) d += __popc((s[i] - 1u) ^ (uint32_t)aux[(long long)m * e.sdim + i]);
            best = d < best ? d : best;
        }
        out[r] = (float)(-(double)e.scale * (double)best);
        return;
    }
    }
}

// Normalised SubTB(λ) weights: w_k = λ^k / Σ_{k'=1..n} (n − k' + 1) λ^{k'} (log-sum-exp in f64).
__device__ double subtb_log_norm(int n, double log_lambda) {
    double mx = -INFINITY;
    for (int k = 1; k <= n; ++k) {
        double v = log((double)(n - k + 1)) + k * log_lambda;
        mx = v > mx ? v : mx;
    }
    double s = 0.0;
    for (int k = 1; k <= n; ++k) s += exp(log((double)(n - k + 1)) + k * log_lambda - mx);
    return mx + log(s);
}

// g_k = log F_k − Σ_{t<k} δ_t for column b of t-major [T, B] / [T+1, B] inputs (f64).
__device__ double subtb_g(const float* delta, const float* flows, int batch, int b, int k, double acc) {
    return (double)flows[(long long)k * batch + b] - acc;
}

// Fused SubTB(λ): out[b] = Σ_{0≤i<j≤n} w_{j−i} (g_i − g_j)², n = lengths[b], with
// δ_ij = g_i − g_j, g_k = log F(s_k) − Σ_{t<k} (log P_F − log P_B)_t and F(s_n) := R (the caller
// writes log R into flows[n]). delta [T, B], flows [T+1, B] (t-major).
extern "C" __global__ void gfn_subtb_fwd(const float* delta, const float* flows, const uint32_t* lengths, int steps,
                                         int batch, double log_lambda, float* out) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= batch) return;
    int n = (int)lengths[b];
    n = n > steps ? steps : n;
    if (n == 0) { out[b] = 0.0f; return; }
    double lz = subtb_log_norm(n, log_lambda);
    double total = 0.0, acc_i = 0.0;
    for (int i = 0; i < n; ++i) {
        double gi = subtb_g(delta, flows, batch, b, i, acc_i);
        double acc_j = acc_i + (double)delta[(long long)i * batch + b];
        for (int j = i + 1; j <= n; ++j) {
            double gj = subtb_g(delta, flows, batch, b, j, acc_j);
            double d = gi - gj;
            total += exp((j - i) * log_lambda - lz) * d * d;
            if (j < n) acc_j += (double)delta[(long long)j * batch + b];
        }
        acc_i += (double)delta[(long long)i * batch + b];
    }
    out[b] = (float)total;
}

// Gradient of out[b] per trajectory: rows 0..T of out = d/d delta [T, B], rows T..2T+1 = d/d flows [T+1, B].
// With G_k = d/dg_k = Σ_{j>k} 2w(g_k − g_j) − Σ_{i<k} 2w(g_i − g_k): d/dF_k = G_k,
// d/dδ_t = −Σ_{k>t} G_k.
extern "C" __global__ void gfn_subtb_jacobian(const float* delta, const float* flows, const uint32_t* lengths,
                                              int steps, int batch, double log_lambda, float* out) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= batch) return;
    float* gd = out;
    float* gf = out + (long long)steps * batch;
    for (int t = 0; t < steps; ++t) gd[(long long)t * batch + b] = 0.0f;
    for (int t = 0; t <= steps; ++t) gf[(long long)t * batch + b] = 0.0f;
    int n = (int)lengths[b];
    n = n > steps ? steps : n;
    if (n == 0) return;
    double lz = subtb_log_norm(n, log_lambda);
    double acc_k = 0.0;
    for (int k = 0; k <= n; ++k) {
        double gk = subtb_g(delta, flows, batch, b, k, acc_k);
        double big_g = 0.0, acc = 0.0;
        for (int j = 0; j <= n; ++j) {
            double gj = subtb_g(delta, flows, batch, b, j, acc);
            if (j != k) {
                int gap = j > k ? j - k : k - j;
                big_g += 2.0 * exp(gap * log_lambda - lz) * (gk - gj);
            }
            if (j < n) acc += (double)delta[(long long)j * batch + b];
        }
        gf[(long long)k * batch + b] = (float)big_g;
        if (k < n) acc_k += (double)delta[(long long)k * batch + b];
    }
    // d/dδ_t = −Σ_{k>t} G_k: a suffix sum (in f64) of the flow gradients just written.
    double suffix = 0.0;
    for (int t = n - 1; t >= 0; --t) {
        suffix += (double)gf[(long long)(t + 1) * batch + b];
        gd[(long long)t * batch + b] = (float)(-suffix);
    }
}

// Adam, in two in-place passes: moments mv = [m | v] (2n) from the gradient, then the parameter.
extern "C" __global__ void gfn_adam_moments(float* mv, const float* g, int n, float b1, float b2) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    mv[i] = b1 * mv[i] + (1.0f - b1) * gi;
    mv[n + i] = b2 * mv[n + i] + (1.0f - b2) * gi * gi;
}

extern "C" __global__ void gfn_adam_apply(float* p, const float* mv, int n, float lr, float sm, float sv, float eps,
                                          float decay) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    p[i] = p[i] * decay - lr * (mv[i] * sm) / (sqrtf(mv[n + i] * sv) + eps);
}

// out = x + b (broadcast over rows), then ReLU if relu != 0: one pass instead of two.
extern "C" __global__ void gfn_bias_act(const float* x, const float* b, int n, int m, int relu, float* out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * m) return;
    float v = x[i] + b[i % m];
    out[i] = (relu && v < 0.0f) ? 0.0f : v;
}

// ---- the hand-written training pass (DeviceTrainer's manual backward) ----

// Max and normaliser of row l's logits over the actions the environment allows: forward actions
// of state s (backward = 0) or backward actions of s (backward = 1). One warp, lanes over actions.
__device__ void warp_max_z_env(const EnvP& e, const uint32_t* s, const float* l, int a_dim, int backward, float* m_out,
                               float* z_out) {
    int lane = threadIdx.x & 31;
    float m = -INFINITY;
    for (int j = lane; j < a_dim; j += 32) {
        bool ok = backward ? bwd_allowed(e, s, j) : fwd_allowed(e, s, j);
        if (ok) m = fmaxf(m, l[j]);
    }
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    float z = 0.0f;
    for (int j = lane; j < a_dim; j += 32) {
        bool ok = backward ? bwd_allowed(e, s, j) : fwd_allowed(e, s, j);
        if (ok) z += expf(l[j] - m);
    }
    for (int off = 16; off > 0; off >>= 1) z += __shfl_xor_sync(0xffffffffu, z, off);
    *m_out = m;
    *z_out = z;
}

// out[t, b] = log P(a | s) of step t → t+1 of trajectory b, read from the logits of the network
// output `logits` (row stride `stride`, the head's columns col .. col + width): forward
// (backward = 0) log P_F(a_t | s_t) from row (t, b); backward (backward = 1) log P_B(s_t | s_{t+1})
// of the undoing action from row (t+1, b). 0 where there is no such action. One warp per (t, b);
// masks come from the environment, not from a mask tensor.
extern "C" __global__ void gfn_step_log_prob(EnvP e, const uint32_t* traj, int w, int steps, int batch,
                                             const float* logits, int stride, int col, int width, int backward,
                                             float* out) {
    long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (i >= (long long)steps * batch) return;
    int lane = threadIdx.x & 31;
    uint32_t a = traj[i * w + act_col(e)];
    long long row = backward ? i + batch : i;
    if (backward) a = bwd_action(e, a);
    if (a == NO_ACTION) { if (lane == 0) out[i] = 0.0f; return; }
    const uint32_t* s = traj + row * w;
    const float* l = logits + row * stride + col;
    float m, z;
    warp_max_z_env(e, s, l, width, backward, &m, &z);
    if (lane == 0) out[i] = l[a] - m - logf(z);
}

// Gradient of the loss with respect to one network output `logits` [N, stride], N = (T+1)·B rows,
// every column written. Head columns: P_F at pf_col (width A), P_B at pb_col (width A_B), log F at
// flow_col; −1 = not in this network. Row (t, b): P_F columns g_pf(t, b) · (1[j = a_t] − p_j) on
// the allowed j (t < T, a_t an action); P_B columns g_pb(t−1, b) · (1[j = a'] − q_j) for the undoing
// action a' of step t−1 → t (t ≥ 1); log F column g_flow(t, b); 0 elsewhere.
// g_mode 0 (TB): g = [B], g_pf = g[b], g_pb = −g[b], g_flow = 0. g_mode 1 (rows): g = [3, T+1, B]
// holding g_pf, g_pb (by step) and g_flow. One warp per row.
extern "C" __global__ void gfn_head_grad(EnvP e, const uint32_t* traj, int w, int steps, int batch,
                                         const float* logits, int stride, int pf_col, int pb_col, int flow_col,
                                         const float* g, int g_mode, float* dout) {
    long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    long long n = (long long)(steps + 1) * batch;
    if (r >= n) return;
    int lane = threadIdx.x & 31;
    int t = (int)(r / batch), b = (int)(r % batch);
    const uint32_t* s = traj + r * w;
    const float* l = logits + r * stride;
    float* o = dout + r * stride;
    long long plane = (long long)(steps + 1) * batch;
    // P_F: the action of this row.
    uint32_t a = t < steps ? s[act_col(e)] : NO_ACTION;
    float gpf = 0.0f, mf = 0.0f, zf = 1.0f;
    if (pf_col >= 0 && a != NO_ACTION) {
        gpf = g_mode == 0 ? g[b] : g[r];
        warp_max_z_env(e, s, l + pf_col, e.n_actions, 0, &mf, &zf);
    }
    // P_B: the action undoing the step into this row.
    uint32_t ab = t >= 1 ? bwd_action(e, traj[(r - batch) * w + act_col(e)]) : NO_ACTION;
    float gpb = 0.0f, mb = 0.0f, zb = 1.0f;
    if (pb_col >= 0 && ab != NO_ACTION) {
        gpb = g_mode == 0 ? -g[b] : g[plane + r - batch];
        warp_max_z_env(e, s, l + pb_col, e.n_back, 1, &mb, &zb);
    }
    float gfl = (flow_col >= 0 && g_mode == 1) ? g[2 * plane + r] : 0.0f;
    for (int j = lane; j < stride; j += 32) {
        float v = 0.0f;
        if (pf_col >= 0 && j >= pf_col && j < pf_col + e.n_actions && a != NO_ACTION) {
            int c = j - pf_col;
            float p = fwd_allowed(e, s, c) ? expf(l[j] - mf) / zf : 0.0f;
            v = gpf * (((uint32_t)c == a ? 1.0f : 0.0f) - p);
        } else if (pb_col >= 0 && j >= pb_col && j < pb_col + e.n_back && ab != NO_ACTION) {
            int c = j - pb_col;
            float q = bwd_allowed(e, s, c) ? expf(l[j] - mb) / zb : 0.0f;
            v = gpb * (((uint32_t)c == ab ? 1.0f : 0.0f) - q);
        } else if (j == flow_col) {
            v = gfl;
        }
        o[j] = v;
    }
}

// Trajectory balance and its gradient in one block: resid_b = log Z + Σ_t (log P_F − log P_B)[t, b]
// − log R_b; out[0] = mean_b resid², out[1] = ∂/∂log Z = mean_b 2·resid, out[2 + b] = 2·resid_b / B.
// The sums run in a fixed order (each thread's columns in order, then a tree over the block), so
// the result is the same on every run.
extern "C" __global__ void gfn_tb_grad(const float* log_pf, const float* log_pb, int steps, int batch,
                                       const float* log_r, const float* log_z, float* out) {
    __shared__ double s_sq[1024];
    __shared__ double s_lin[1024];
    double sq = 0.0, lin = 0.0;
    float lz = log_z[0];
    for (int b = threadIdx.x; b < batch; b += blockDim.x) {
        float acc = 0.0f;
        for (int t = 0; t < steps; ++t) acc += log_pf[(long long)t * batch + b] - log_pb[(long long)t * batch + b];
        float resid = lz + acc - log_r[b];
        out[2 + b] = 2.0f * resid / (float)batch;
        sq += (double)resid * (double)resid;
        lin += (double)resid;
    }
    s_sq[threadIdx.x] = sq;
    s_lin[threadIdx.x] = lin;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) {
            s_sq[threadIdx.x] += s_sq[threadIdx.x + half];
            s_lin[threadIdx.x] += s_lin[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        out[0] = (float)(s_sq[0] / (double)batch);
        out[1] = (float)(2.0 * s_lin[0] / (double)batch);
    }
}

// ReLU's backward in place: d[i] = 0 where the layer's output h[i] is 0 (h = relu(z) > 0 ⇔ z > 0).
extern "C" __global__ void gfn_relu_grad(float* d, const float* h, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    if (!(h[i] > 0.0f)) d[i] = 0.0f;
}

// Column sums of x [n, m] in two deterministic passes: partial[p, j] = Σ over rows p, p + P, …
// (in order), then out[j] = Σ_p partial[p, j] (in order). Pass 1: grid (⌈m/32⌉, P), 32×8 threads.
extern "C" __global__ void gfn_col_sum_partial(const float* x, int n, int m, int parts, float* partial) {
    __shared__ float tile[8][33];
    int j = blockIdx.x * 32 + threadIdx.x;
    int p = blockIdx.y;
    float acc = 0.0f;
    if (j < m)
        for (long long i = (long long)p * 8 + threadIdx.y; i < n; i += (long long)parts * 8) acc += x[i * m + j];
    tile[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < m) {
        float s = 0.0f;
        for (int k = 0; k < 8; ++k) s += tile[k][threadIdx.x];
        partial[(long long)p * m + j] = s;
    }
}

extern "C" __global__ void gfn_col_sum_final(const float* partial, int parts, int m, float* out) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= m) return;
    float s = 0.0f;
    for (int p = 0; p < parts; ++p) s += partial[(long long)p * m + j];
    out[j] = s;
}
