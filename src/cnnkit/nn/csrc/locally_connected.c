/* Locally connected layer: the three products of forward and backward, fused with the patch gather.
 *
 * Built on first use by cnnkit/_native.py (cc -O3 -march=native -fopenmp) and called through ctypes
 * from cnnkit/nn/locally_connected.py, which prepares the layouts below and keeps a pure-torch path for
 * every case this file does not take (no compiler, other dtypes, other devices).
 *
 * Notation: N samples, L output positions, KK kernel offsets, C input channels, K = KK·C inputs per
 * patch (flattened (kernel offset, channel), channels fastest: the Keras order), F filters.
 *
 *   x     (N, X) floats: the zero-padded input, channels last; X = prod(padded spatial)·C.
 *   offs  (L, KK): where the patch of position l starts for kernel offset kk, in floats from the start of
 *         a sample, so that patch[n, l, kk·C + c] = x[n·X + offs[l·KK + kk] + c].
 *   w     (L, K, F): the weight, untouched (never copied, never packed as a whole).
 *
 * Every product is a small matmul per position, computed in register tiles of the target's vectors
 * (GCC/Clang vector extensions: 16 floats with AVX-512, 8 with AVX, 4 with SSE2 or NEON). The patches are
 * read straight from x (no unfolded copy). */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Vector width and register budget of the target (the kernel is built with -march=native where the
 * compiler allows): VL floats per vector, ACC accumulator vectors per tile (leaving registers for the
 * operands). Tiles are up to 8 rows × NVMAX vectors with rows·vectors ≤ ACC. The caller pads its
 * batch-last layouts to multiples of 16 floats, a multiple of every VL here. */
#if defined(__AVX512F__)
#define VL 16
#define ACC 24 /* of 32 registers */
#elif defined(__AVX__)
#define VL 8
#define ACC 12 /* of 16 */
#elif defined(__aarch64__)
#define VL 4
#define ACC 24 /* of 32 */
#else
#define VL 4
#define ACC 12 /* of 16 (SSE2) */
#endif
#define NVMAX 4 /* the tiles' loops over vectors are unrolled 4 times: keep in step */

typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef float vfu __attribute__((vector_size(VL * sizeof(float)), aligned(4))); /* unaligned access */

#define INLINE static inline __attribute__((always_inline))

INLINE vf vload(const float *p) { return *(const vfu *)p; }
INLINE void vstore(float *p, vf v) { *(vfu *)p = v; }
INLINE vf vbcast(float s) { return (vf){0} + s; }

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Rows of the next tile: 8, 4, 2 or 1, no more than are left and within the register budget. */
static int tile_rows(int64_t rows, int NV) {
    int rn = 8;
    while (rn > 1 && (rn > rows || rn * NV > ACC)) rn /= 2;
    return rn;
}

/* ---- forward: y[n, l, f] = sum_k patch[n, l, k] · w[l, k, f] ------------------------------------------
 * Tile: RN samples × NV vectors of filters. Broadcast one patch value per sample, FMA into NV vectors. */

INLINE void fwd_tile(const int RN, const int NV, const float *x, int64_t X, const int64_t *off, int64_t KK,
                     int64_t C, const float *w, int64_t ldw, float *y, int64_t ldy) {
    vf acc[8][NVMAX];
#pragma GCC unroll 8
    for (int r = 0; r < RN; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[r][v] = (vf){0};
    for (int64_t kk = 0; kk < KK; kk++) {
        const float *xk = x + off[kk];
        const float *wk = w + kk * C * ldw;
        for (int64_t c = 0; c < C; c++) {
            vf wv[NVMAX];
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) wv[v] = vload(wk + c * ldw + v * VL);
#pragma GCC unroll 8
            for (int r = 0; r < RN; r++) {
                vf b = vbcast(xk[r * X + c]);
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++) acc[r][v] += b * wv[v];
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < RN; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) vstore(y + r * ldy + v * VL, acc[r][v]);
}

#define FWD_CASES(NV)                                                                                      \
    case 8 * 4 + NV: fwd_tile(8, NV, x, X, off, KK, C, w, ldw, y, ldy); break;                           \
    case 4 * 4 + NV: fwd_tile(4, NV, x, X, off, KK, C, w, ldw, y, ldy); break;                           \
    case 2 * 4 + NV: fwd_tile(2, NV, x, X, off, KK, C, w, ldw, y, ldy); break;                           \
    case 1 * 4 + NV: fwd_tile(1, NV, x, X, off, KK, C, w, ldw, y, ldy); break;

/* Rows n0..n0+rows of one position's output, NV vectors of filters (NV·16 columns of w and y). */
static void fwd_rows(int64_t rows, int NV, const float *x, int64_t X, const int64_t *off, int64_t KK, int64_t C,
                     const float *w, int64_t ldw, float *y, int64_t ldy) {
    while (rows > 0) {
        const int rn = tile_rows(rows, NV);
        switch (rn * 4 + NV) {
            FWD_CASES(1)
            FWD_CASES(2)
            FWD_CASES(3)
            FWD_CASES(4)
        }
        rows -= rn;
        x += rn * X;
        y += rn * ldy;
    }
}

/* y: (N, L, F). Returns 0, or -1 if a buffer could not be allocated. */
int lc_forward(const float *x, int64_t N, int64_t X, const int64_t *offs, int64_t L, int64_t KK, int64_t C,
               const float *w, int64_t F, float *y, int threads) {
    const int64_t K = KK * C;
    const int partial = F % VL != 0;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        /* A partial last block of filters is packed, zero-padded to whole vectors, per position. */
        float *wbuf = partial ? malloc(K * NVMAX * VL * sizeof(float)) : NULL;
        float ybuf[8 * NVMAX * VL];
        if (partial && !wbuf) failed = 1;
#pragma omp for schedule(static)
        for (int64_t l = 0; l < L; l++) {
            if (partial && !wbuf) continue;
            const int64_t *off = offs + l * KK;
            const float *wl = w + l * K * F;
            for (int64_t f0 = 0; f0 < F; f0 += NVMAX * VL) {
                const int64_t nf = min64(NVMAX * VL, F - f0);
                const int NV = (int)((nf + VL - 1) / VL);
                if (nf == NV * VL) {
                    fwd_rows(N, NV, x, X, off, KK, C, wl + f0, F, y + l * F + f0, L * F);
                    continue;
                }
                for (int64_t k = 0; k < K; k++) {
                    memcpy(wbuf + k * NV * VL, wl + k * F + f0, nf * sizeof(float));
                    memset(wbuf + k * NV * VL + nf, 0, (NV * VL - nf) * sizeof(float));
                }
                for (int64_t n0 = 0; n0 < N; n0 += 8) {
                    const int64_t rows = min64(8, N - n0);
                    fwd_rows(rows, NV, x + n0 * X, X, off, KK, C, wbuf, NV * VL, ybuf, NV * VL);
                    for (int64_t r = 0; r < rows; r++)
                        memcpy(y + (n0 + r) * L * F + l * F + f0, ybuf + r * NV * VL, nf * sizeof(float));
                }
            }
        }
        free(wbuf);
    }
    return failed ? -1 : 0;
}

/* ---- weight gradient: gw[l, k, f] = sum_n patch[n, l, k] · g[l, n, f] -----------------------------------
 * g is (L, N, FP) with FP = F rounded up to whole vectors, zero-padded. Tile: RK inputs × NV vectors of
 * filters; the sum runs over the samples. */

INLINE void gw_tile(const int RK, const int NV, const float *const *xr, int64_t X, int64_t N, const float *g,
                    int64_t FP, float *gw, int64_t ldgw) {
    vf acc[8][NVMAX];
#pragma GCC unroll 8
    for (int r = 0; r < RK; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[r][v] = (vf){0};
    for (int64_t n = 0; n < N; n++) {
        vf gv[NVMAX];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) gv[v] = vload(g + n * FP + v * VL);
#pragma GCC unroll 8
        for (int r = 0; r < RK; r++) {
            vf b = vbcast(xr[r][n * X]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[r][v] += b * gv[v];
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < RK; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) vstore(gw + r * ldgw + v * VL, acc[r][v]);
}

#define GW_CASES(NV)                                                                                       \
    case 8 * 4 + NV: gw_tile(8, NV, xr, X, N, g, FP, gw, ldgw); break;                                     \
    case 4 * 4 + NV: gw_tile(4, NV, xr, X, N, g, FP, gw, ldgw); break;                                     \
    case 2 * 4 + NV: gw_tile(2, NV, xr, X, N, g, FP, gw, ldgw); break;                                     \
    case 1 * 4 + NV: gw_tile(1, NV, xr, X, N, g, FP, gw, ldgw); break;

/* `rows` inputs (their patch columns start at xr[0..rows)) × NV vectors of filters. */
static void gw_rows(int64_t rows, int NV, const float *const *xr, int64_t X, int64_t N, const float *g,
                    int64_t FP, float *gw, int64_t ldgw) {
    while (rows > 0) {
        const int rk = tile_rows(rows, NV);
        switch (rk * 4 + NV) {
            GW_CASES(1)
            GW_CASES(2)
            GW_CASES(3)
            GW_CASES(4)
        }
        rows -= rk;
        xr += rk;
        gw += rk * ldgw;
    }
}

/* gw: (L, K, F). */
void lc_grad_weight(const float *x, int64_t N, int64_t X, const int64_t *offs, int64_t L, int64_t KK,
                    int64_t C, const float *g, int64_t F, int64_t FP, float *gw, int threads) {
    const int64_t K = KK * C;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t l = 0; l < L; l++) {
        const int64_t *off = offs + l * KK;
        const float *gl = g + l * N * FP;
        float *gwl = gw + l * K * F;
        float buf[8 * NVMAX * VL];
        for (int64_t k0 = 0; k0 < K; k0 += 8) {
            const float *xr[8];
            const int64_t rows = min64(8, K - k0);
            for (int64_t r = 0; r < rows; r++) xr[r] = x + off[(k0 + r) / C] + (k0 + r) % C;
            for (int64_t f0 = 0; f0 < F; f0 += NVMAX * VL) {
                const int64_t nf = min64(NVMAX * VL, F - f0);
                const int NV = (int)((nf + VL - 1) / VL);
                if (nf == NV * VL) {
                    gw_rows(rows, NV, xr, X, N, gl + f0, FP, gwl + k0 * F + f0, F);
                    continue;
                }
                /* A partial block of filters: g is padded, so compute whole vectors into a buffer. */
                gw_rows(rows, NV, xr, X, N, gl + f0, FP, buf, NV * VL);
                for (int64_t r = 0; r < rows; r++)
                    memcpy(gwl + (k0 + r) * F + f0, buf + r * NV * VL, nf * sizeof(float));
            }
        }
    }
}

/* ---- input gradient: gx[n, offs[l, kk] + c] += sum_f g[l, f, n] · w[l, kk·C + c, f] --------------------
 * Computed batch-last so that the scatter onto the input is whole-vector adds: gt is (L, F, NP) and gx is
 * (X, NP), NP = N rounded up to whole vectors, both zero-padded. Tile: RK inputs × NV vectors of samples;
 * the sum runs over the filters. Positions whose patches overlap must not run at the same time: the
 * output rows (first spatial dimension, `per_row` positions each) are cut into bands of `band` rows, wide
 * enough that bands 2 apart never touch the same input ((band + 1)·stride > dilation·(kernel − 1), which
 * the caller's band ≥ ceil(dilation·(kernel − 1) / stride) satisfies), and the even bands run before the
 * odd. */

INLINE void gx_tile(const int RK, const int NV, const float *w, int64_t F, const float *gt, int64_t NP,
                    float *const *dst) {
    vf acc[8][NVMAX];
#pragma GCC unroll 8
    for (int r = 0; r < RK; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[r][v] = (vf){0};
    for (int64_t f = 0; f < F; f++) {
        vf gv[NVMAX];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) gv[v] = vload(gt + f * NP + v * VL);
#pragma GCC unroll 8
        for (int r = 0; r < RK; r++) {
            vf b = vbcast(w[r * F + f]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[r][v] += b * gv[v];
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < RK; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) vstore(dst[r] + v * VL, vload(dst[r] + v * VL) + acc[r][v]);
}

#define GX_CASES(NV)                                                                                       \
    case 8 * 4 + NV: gx_tile(8, NV, wk, F, gtn, NP, dn); break;                                            \
    case 4 * 4 + NV: gx_tile(4, NV, wk, F, gtn, NP, dn); break;                                            \
    case 2 * 4 + NV: gx_tile(2, NV, wk, F, gtn, NP, dn); break;                                            \
    case 1 * 4 + NV: gx_tile(1, NV, wk, F, gtn, NP, dn); break;

static void gx_position(int64_t l, const int64_t *offs, int64_t KK, int64_t C, const float *w, int64_t F,
                        const float *gt, int64_t NP, float *gx) {
    const int64_t K = KK * C;
    const int64_t *off = offs + l * KK;
    const float *wl = w + l * K * F;
    const float *gtl = gt + l * F * NP;
    for (int64_t k0 = 0; k0 < K; k0 += 8) {
        const int64_t rows = min64(8, K - k0);
        float *dst[8];
        for (int64_t r = 0; r < rows; r++) dst[r] = gx + (off[(k0 + r) / C] + (k0 + r) % C) * NP;
        for (int64_t n0 = 0; n0 < NP; n0 += NVMAX * VL) {
            const int NV = (int)(min64(NVMAX * VL, NP - n0) / VL);
            for (int64_t done = 0; done < rows;) {
                const int rk = tile_rows(rows - done, NV);
                const float *wk = wl + (k0 + done) * F;
                const float *gtn = gtl + n0;
                float *dn[8];
                for (int r = 0; r < rk; r++) dn[r] = dst[done + r] + n0;
                switch (rk * 4 + NV) {
                    GX_CASES(1)
                    GX_CASES(2)
                    GX_CASES(3)
                    GX_CASES(4)
                }
                done += rk;
            }
        }
    }
}

/* gx: (X, NP), accumulated into (the caller zeroes it). */
void lc_grad_input(const int64_t *offs, int64_t L, int64_t KK, int64_t C, const float *w, int64_t F,
                   const float *gt, int64_t NP, float *gx, int64_t per_row, int64_t band, int threads) {
    const int64_t rows = L / per_row;
    const int64_t bands = (rows + band - 1) / band;
    for (int phase = 0; phase < 2; phase++) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
        for (int64_t b = phase; b < bands; b += 2) {
            const int64_t l1 = min64((b + 1) * band, rows) * per_row;
            for (int64_t l = b * band * per_row; l < l1; l++) gx_position(l, offs, KK, C, w, F, gt, NP, gx);
        }
    }
}

/* Floats per vector in this build (16 with AVX-512, 8 with AVX, 4 otherwise). */
int lc_vector_width(void) { return VL; }
