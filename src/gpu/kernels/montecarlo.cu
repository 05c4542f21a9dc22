// Monte Carlo of a value model, one path per thread (grid-stride), compiled
// at run time by NVRTC: no headers, so nothing of the CUDA toolkit is needed
// beyond the driver and libnvrtc. Every formula mirrors src/gpu/sampling.rs
// and src/gpu/philox.rs operation for operation; compiled with --fmad=false
// so that no multiply-add is contracted and the draws agree with the CPU's.

typedef unsigned int u32;
typedef unsigned long long u64;

#define MAX_DRIVERS 256
#define TABLE_POINTS 4097

#define KIND_FIXED 0
#define KIND_NORMAL 1
#define KIND_LOGNORMAL 2
#define KIND_TRIANGULAR 3
#define KIND_TABULATED 4
#define KIND_UNIFORM 5
#define KIND_BERNOULLI 6

// Philox4x32-10 (Salmon et al., SC 2011), written out: curand_kernel.h would
// need the toolkit's headers at run time.
__device__ __forceinline__ void philox4x32_10(u32 c[4], u32 k0, u32 k1) {
    #pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        u32 hi0 = __umulhi(0xD2511F53u, c[0]);
        u32 lo0 = 0xD2511F53u * c[0];
        u32 hi1 = __umulhi(0xCD9E8D57u, c[2]);
        u32 lo1 = 0xCD9E8D57u * c[2];
        u32 n0 = hi1 ^ c[1] ^ k0;
        u32 n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0;
        c[1] = lo1;
        c[2] = n2;
        c[3] = lo0;
    }
}

__device__ __forceinline__ double open_unit(u32 high, u32 low) {
    u64 bits = ((u64)high << 20) | (u64)(low >> 12);
    return ((double)bits + 0.5) * (1.0 / 4503599627370496.0);
}

__device__ __forceinline__ double rational(double x, const double* top, const double* bottom) {
    double t = top[7];
    double b = bottom[7];
    #pragma unroll
    for (int i = 6; i >= 0; --i) {
        t = t * x + top[i];
        b = b * x + bottom[i];
    }
    return t / b;
}

// Wichura's AS 241 (PPND16).
__constant__ double AS241_A[8] = {3.3871328727963666080e0, 1.3314166789178437745e2,
    1.9715909503065514427e3, 1.3731693765509461125e4, 4.5921953931549871457e4,
    6.7265770927008700853e4, 3.3430575583588128105e4, 2.5090809287301226727e3};
__constant__ double AS241_B[8] = {1.0, 4.2313330701600911252e1, 6.8718700749205790830e2,
    5.3941960214247511077e3, 2.1213794301586595867e4, 3.9307895800092710610e4,
    2.8729085735721942674e4, 5.2264952788528545610e3};
__constant__ double AS241_C[8] = {1.42343711074968357734e0, 4.63033784615654529590e0,
    5.76949722146069140550e0, 3.64784832476320460504e0, 1.27045825245236838258e0,
    2.41780725177450611770e-1, 2.27238449892691845833e-2, 7.74545014278341407640e-4};
__constant__ double AS241_D[8] = {1.0, 2.05319162663775882187e0, 1.67638483018380384940e0,
    6.89767334985100004550e-1, 1.48103976427480074590e-1, 1.51986665636164571966e-2,
    5.47593808499534494600e-4, 1.05075007164441684324e-9};
__constant__ double AS241_E[8] = {6.65790464350110377720e0, 5.46378491116411436990e0,
    1.78482653991729133580e0, 2.96560571828504891230e-1, 2.65321895265761230930e-2,
    1.24266094738807843860e-3, 2.71155556874348757815e-5, 2.01033439929228813265e-7};
__constant__ double AS241_F[8] = {1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1,
    1.48753612908506148525e-2, 7.86869131145613259100e-4, 1.84631831751005468180e-5,
    1.42151175831644588870e-7, 2.04426310338993978564e-15};

__device__ double normal_quantile(double u) {
    double q = u - 0.5;
    if (fabs(q) <= 0.425) {
        return q * rational(0.180625 - q * q, AS241_A, AS241_B);
    }
    double tail = q < 0.0 ? u : 1.0 - u;
    double r = sqrt(-log(tail));
    double magnitude = r <= 5.0 ? rational(r - 1.6, AS241_C, AS241_D)
                                : rational(r - 5.0, AS241_E, AS241_F);
    return q < 0.0 ? -magnitude : magnitude;
}

__device__ __forceinline__ double copula_uniform(double score) {
    double u = 0.5 * erfc(-score / 1.4142135623730951);
    return fmin(fmax(u, 2.2250738585072014e-308), 1.0 - 2.220446049250313e-16);
}

// params: four per driver, as Sampler::device_layout lays them out.
__device__ double quantile(int kind, const double* p, const double* table, double u) {
    switch (kind) {
    case KIND_FIXED:
        return p[0];
    case KIND_NORMAL:
        return p[0] + p[1] * normal_quantile(u);
    case KIND_LOGNORMAL:
        return exp(p[0] + p[1] * normal_quantile(u));
    case KIND_TRIANGULAR: {
        double min = p[0], mode = p[1], max = p[2];
        double span = max - min;
        if (span <= 0.0) return min;
        double cut = (mode - min) / span;
        double rising = min + sqrt(u * span * (mode - min));
        double falling = max - sqrt((1.0 - u) * span * (max - mode));
        return u < cut ? rising : falling;
    }
    case KIND_TABULATED: {
        double position = u * (double)(TABLE_POINTS - 1);
        int index = (int)position;
        if (index > TABLE_POINTS - 2) index = TABLE_POINTS - 2;
        double fraction = position - (double)index;
        return p[0] + p[1] * (table[index] + fraction * (table[index + 1] - table[index]));
    }
    case KIND_UNIFORM:
        return p[0] + u * (p[1] - p[0]);
    default: {  // KIND_BERNOULLI
        double prob = p[0], impact = p[1];
        bool is_impact = impact >= 0.0 ? u > 1.0 - prob : u <= prob;
        return is_impact ? impact : 0.0;
    }
    }
}

__device__ __forceinline__ double driver_uniform(u32 seed_lo, u32 seed_hi, u64 path, int driver) {
    u32 c[4] = {(u32)path, (u32)(path >> 32), (u32)(driver / 2), 0u};
    philox4x32_10(c, seed_lo, seed_hi);
    return driver % 2 == 0 ? open_unit(c[0], c[1]) : open_unit(c[2], c[3]);
}

extern "C" __global__ void simulate_paths(
    u32 seed_lo, u32 seed_hi, u64 first, u64 count,
    int drivers, const int* kinds, const double* params, const int* table_offsets,
    const double* tables, const double* cholesky, int correlated,
    const double* weights, double base,
    double shift, double hist_low, double hist_scale, int bins,
    u64* histogram, u64* outside,
    double* block_sum, double* block_sum_sq, double* block_min, double* block_max,
    u64* block_losses)
{
    double sum = 0.0, sum_sq = 0.0;
    double lowest = 1.0 / 0.0, highest = -1.0 / 0.0;
    u64 losses = 0;
    double scores[MAX_DRIVERS];
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) {
        u64 path = first + i;
        double npv = base;
        if (correlated) {
            for (int d = 0; d < drivers; ++d) {
                scores[d] = normal_quantile(driver_uniform(seed_lo, seed_hi, path, d));
            }
            for (int row = 0; row < drivers; ++row) {
                double value = 0.0;
                for (int k = 0; k <= row; ++k) {
                    value += cholesky[row * drivers + k] * scores[k];
                }
                double u = copula_uniform(value);
                npv += weights[row] * quantile(kinds[row], params + 4 * row,
                                               tables + table_offsets[row], u);
            }
        } else {
            for (int d = 0; d < drivers; ++d) {
                double u = driver_uniform(seed_lo, seed_hi, path, d);
                npv += weights[d] * quantile(kinds[d], params + 4 * d,
                                             tables + table_offsets[d], u);
            }
        }
        double centred = npv - shift;
        sum += centred;
        sum_sq += centred * centred;
        lowest = fmin(lowest, npv);
        highest = fmax(highest, npv);
        losses += npv < 0.0 ? 1ull : 0ull;
        double position = (npv - hist_low) * hist_scale;
        if (position < 0.0) {
            atomicAdd(&outside[0], 1ull);
        } else if (position >= (double)bins) {
            atomicAdd(&outside[1], 1ull);
        } else {
            atomicAdd(&histogram[(int)position], 1ull);
        }
    }

    // Block reduction in shared memory (blockDim.x is a power of two <= 256).
    __shared__ double s_sum[256], s_sum_sq[256], s_min[256], s_max[256];
    __shared__ u64 s_losses[256];
    int t = threadIdx.x;
    s_sum[t] = sum;
    s_sum_sq[t] = sum_sq;
    s_min[t] = lowest;
    s_max[t] = highest;
    s_losses[t] = losses;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (t < half) {
            s_sum[t] += s_sum[t + half];
            s_sum_sq[t] += s_sum_sq[t + half];
            s_min[t] = fmin(s_min[t], s_min[t + half]);
            s_max[t] = fmax(s_max[t], s_max[t + half]);
            s_losses[t] += s_losses[t + half];
        }
        __syncthreads();
    }
    if (t == 0) {
        block_sum[blockIdx.x] = s_sum[0];
        block_sum_sq[blockIdx.x] = s_sum_sq[0];
        block_min[blockIdx.x] = s_min[0];
        block_max[blockIdx.x] = s_max[0];
        block_losses[blockIdx.x] = s_losses[0];
    }
}
