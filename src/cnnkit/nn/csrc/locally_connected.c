/* Locally connected layer: the three products of forward and backward, fused with the patch gather.
 *
 * Built on first use by cnnkit/_native.py (cc -O3 -march=native -fopenmp) and called through ctypes
 * from the registered operators in cnnkit/nn/locally_connected.py, which keep a pure-torch path for every
 * case this file does not take (no compiler, other dtypes, other devices). The functions read and write
 * torch's layouts: (N, C, *spatial) input and input gradient, (N, F, *output_size) output and output
 * gradient; the one copy in between is the channels-last input (lc_pack_input).
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

/* Vector width and register tile of the target (the kernel is built with -march=native where the compiler
 * allows), sized to its register file like a BLAS micro-kernel. VL floats per vector. The products run
 * over blocks of NB vectors of columns, in tiles of ROWS rows × NB vectors: ROWS·NB accumulators, the
 * broadcast number of each step and the NB vectors of b (or b read as FMA memory operands), all in
 * registers. A block narrower than NB vectors (the last one when the columns are not a multiple of NB·VL)
 * takes up to ACC / NV rows, at most RMAX (8 row pointers are what the general registers hold).
 *
 *   target          VL  vector registers  whole-block tile  narrower blocks (NV = 3, 2, 1)
 *   AVX-512         16  32                4 × 4             8 × 3, 8 × 2, 8 × 1
 *   AVX2 + FMA       8  16                3 × 4             4 × 3, 6 × 2, 8 × 1
 *   AVX without FMA  8  16                2 × 4             3 × 3, 4 × 2, 8 × 1
 *   SSE2             4  16                3 × 4             3 × 3, 4 × 2, 8 × 1
 *   NEON (AArch64)   4  32                4 × 4             8 × 3, 8 × 2, 8 × 1
 *
 * AVX2 had AVX's 2 × 4 (8 accumulators) before. Measured on an AVX2-only AMD EPYC (Zen 3), the three
 * products of the benchmark layer on one thread (best of 6 interleaved rounds): 3 × 4 15.9 ms (b read as
 * FMA memory operands: 3 loads and 3 broadcasts per 12 FMAs), 4 × 3 17.1, 6 × 2 (the BLAS shape, which
 * walks the patches twice per position) 17.7, 3 × 3, 5 × 2, 2 × 4 and 4 × 2 18.2–19.7, the old build 19.8.
 * Without FMA a product needs a register of its own, hence ACC 10.
 * tests/test_native.py compiles the x86-64, x86-64-v3 and x86-64-v4 variants with -S and checks that no
 * tile loop touches the stack. -DLC_NB=… -DLC_ROWS=… override the whole-block tile, for measuring others.
 *
 * The buffers that hold batch-last or filter-last panels are padded to whole vectors inside this file. */
#if defined(__AVX512F__)
#define VL 16
#define NB_ 4
#define ROWS_ 4
#define ACC 24 /* of 32 registers */
#define RMAX 8
#elif defined(__AVX__) && defined(__FMA__)
#define VL 8
#define NB_ 4
#define ROWS_ 3
#define ACC 12 /* of 16 */
#define RMAX 8
#elif defined(__AVX__)
#define VL 8
#define NB_ 4
#define ROWS_ 2
#define ACC 10 /* of 16: without FMA each product needs a register of its own */
#define RMAX 8
#elif defined(__aarch64__)
#define VL 4
#define NB_ 4
#define ROWS_ 4
#define ACC 24 /* of 32 */
#define RMAX 8
#else
#define VL 4
#define NB_ 4
#define ROWS_ 3
#define ACC 10 /* of 16: without FMA each product needs a register of its own */
#define RMAX 8
#endif
#ifdef LC_NB
#define NB LC_NB
#else
#define NB NB_
#endif
#ifdef LC_ROWS
#define ROWS LC_ROWS
#else
#define ROWS ROWS_
#endif
#define NB_MAX 4 /* the product's switch has cases for 1 to 4 vectors; tile() keeps acc[RMAX][NB_MAX] */
#if NB > NB_MAX || ROWS > RMAX
#error "tile larger than the cases compiled"
#endif

/* Most rows of a tile NV vectors wide (a compile-time constant for constant NV). */
#define CAP(NV) ((NV) == NB ? ROWS : ACC / (NV) < RMAX ? ACC / (NV) : RMAX)

typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef float vfu __attribute__((vector_size(VL * sizeof(float)), aligned(4))); /* unaligned access */

#define INLINE static inline __attribute__((always_inline))

INLINE vf vload(const float *p) { return *(const vfu *)p; }
INLINE void vstore(float *p, vf v) { *(vfu *)p = v; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Rows of the next tile: the most of 8, 6, 4, 3, 2, 1 that are left and that CAP(NV) allows. */
static int tile_rows(int64_t rows, int NV) {
    static const int sizes[] = {8, 6, 4, 3, 2, 1};
    const int64_t most = min64(rows, CAP(NV));
    int i = 0;
    while (sizes[i] > most) i++;
    return sizes[i];
}

/* ---- the register tile ------------------------------------------------------------------------------
 * The three products share one shape. For RN rows r and NV vectors v:
 *
 *     out[r][v·VL ..] (= or +=)  Σ_s Σ_{i < len}  a[r][seg[s] + i·a_step] · b[s·b_seg + i·b_step + v·VL ..]
 *
 * one broadcast number per row and step, NV vectors of b per step, RN·NV accumulators in registers:
 *
 *   product       rows     a (broadcast)                        b (vectors)               sum over
 *   forward       samples  patch rows, one segment per offset   weight rows               (offset, channel)
 *   weight grad   inputs   patch columns (a_step = X)           gradient rows (L, N, FP)  samples
 *   input grad    inputs   weight rows                          gradient rows (L, F, NP)  filters
 */

typedef struct {
    const float *const *a; /* one pointer per row */
    int64_t a_step;
    const int64_t *seg; /* nseg offsets added to every row pointer; NULL for one segment at 0 */
    int64_t nseg, len;
    const float *b;
    int64_t b_seg, b_step;
    float *const *out; /* one pointer per row */
    int add;           /* accumulate into out instead of overwriting it */
} Tile;

INLINE void tile(const int RN, const int NV, const Tile *t) {
    vf acc[RMAX][NB_MAX];
#pragma GCC unroll 8
    for (int r = 0; r < RN; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[r][v] = (vf){0};
    for (int64_t s = 0; s < t->nseg; s++) {
        const int64_t offset = t->seg ? t->seg[s] : 0;
        const float *b = t->b + s * t->b_seg;
        const float *a[RMAX];
#pragma GCC unroll 8
        for (int r = 0; r < RN; r++) a[r] = t->a[r] + offset;
        for (int64_t i = 0; i < t->len; i++) {
            vf bv[NB_MAX];
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) bv[v] = vload(b + i * t->b_step + v * VL);
#pragma GCC unroll 8
            for (int r = 0; r < RN; r++) {
                /* float × vector broadcasts x; no separate vector of it (`(vf){0} + x` costs an add,
                 * 0 + -0.0 being +0.0, and a register holding the zero, which AVX2's tile has not). */
                const float x = a[r][i * t->a_step];
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++) acc[r][v] += x * bv[v];
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < RN; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            float *o = t->out[r] + v * VL;
            vstore(o, t->add ? vload(o) + acc[r][v] : acc[r][v]);
        }
}

/* One case of the product's switch: a tile of RN rows × NV vectors, compiled only where the target's
 * tile allows it (tile_rows never asks for another). */
#define TILE_CASE(RN, NV)                                                                                  \
    case RN * 8 + NV:                                                                                      \
        if (NV <= NB && RN <= CAP(NV)) tile(RN, NV, &t);                                                   \
        break;
#define TILE_CASES(NV)                                                                                     \
    TILE_CASE(8, NV) TILE_CASE(6, NV) TILE_CASE(4, NV) TILE_CASE(3, NV) TILE_CASE(2, NV)   \
    TILE_CASE(1, NV)

/* All `rows` rows of a product, NV ≤ NB vectors wide, in tiles of tile_rows(). Inlined into each caller
 * so that the caller's constant fields (a_step, seg, add) specialise the tiles' loops. */
INLINE void product(int64_t rows, int NV, Tile t) {
    while (rows > 0) {
        const int rn = tile_rows(rows, NV);
        switch (rn * 8 + NV) {
            TILE_CASES(1)
            TILE_CASES(2)
            TILE_CASES(3)
            TILE_CASES(4)
        }
        rows -= rn;
        t.a += rn;
        t.out += rn;
    }
}

/* Vectors needed for `columns` columns (the last one possibly partial). */
static int vectors(int64_t columns) { return (int)((columns + VL - 1) / VL); }

/* Per-thread scratch: row pointers and the buffers of a partial column block. */
typedef struct {
    const float **a;
    float **out;
    float *pack, *rows;
} Scratch;

static int scratch_new(Scratch *s, int64_t rows, int64_t pack_floats, int64_t row_floats) {
    s->a = malloc(rows * sizeof(float *));
    s->out = malloc(rows * sizeof(float *));
    s->pack = pack_floats ? malloc(pack_floats * sizeof(float)) : NULL;
    s->rows = row_floats ? malloc(row_floats * sizeof(float)) : NULL;
    return s->a && s->out && (s->pack || !pack_floats) && (s->rows || !row_floats);
}

static void scratch_free(Scratch *s) {
    free(s->a);
    free(s->out);
    free(s->pack);
    free(s->rows);
}

/* ---- layouts ------------------------------------------------------------------------------------------
 * The caller's tensors are torch's (N, C, *spatial) input and (N, F, L) output; the products want the
 * input channels last. lc_pack_input makes that copy, cache-blocked, with a per-sample stride X ≥ S·C
 * chosen by the caller (padded when S·C floats are a multiple of 4 KiB: the weight gradient reads the
 * samples' patches X floats apart, and 4 KiB apart they all fall into one L1 set). The padding is zeroed. */
int lc_pack_input(const float *x, int64_t N, int64_t C, int64_t S, int64_t X, float *out, int threads) {
    const int64_t block = 64; /* spatial positions per block: 64·C floats written, C runs of 256 B read */
    const int64_t blocks = (S + block - 1) / block;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t nb = 0; nb < N * blocks; nb++) {
        const int64_t n = nb / blocks, s0 = nb % blocks * block, s1 = min64(s0 + block, S);
        const float *xn = x + n * C * S;
        float *on = out + n * X;
        for (int64_t s = s0; s < s1; s++)
            for (int64_t c = 0; c < C; c++) on[s * C + c] = xn[c * S + s];
        if (s1 == S && X > S * C) memset(on + S * C, 0, (X - S * C) * sizeof(float));
    }
    return 0;
}

/* Positions handled together where torch's (N, F, L) layout is read or written: each (n, f) row is then
 * touched as a run of PB consecutive positions (one access per row and chunk instead of one per position;
 * per position, 1024 scattered rows of the benchmark layer cost more TLB and L2 traffic than the products'
 * own reads). */
#define PB 8
/* The chunk's per-position buffers are this many floats further apart than their size: sizes that are
 * multiples of 4 KiB (32 samples × 32 filters) would put the PB stores of a run into one L1 set. */
#define PANEL_PAD 16

/* 8 × 8 transpose in registers: dst[j·ld + i] = src[i·ls + j] (+ add[j·la + i] when add is not NULL).
 * Vectors of 8 floats whatever the build's VL (two halves on SSE2/NEON); the shuffles are AVX's
 * unpack / shuffle / permute2f128 sequence. Moves torch's (N, F, L) rows to and from per-position
 * buffers a run of 8 positions at a time. */
typedef float v8 __attribute__((vector_size(8 * sizeof(float))));
typedef float v8u __attribute__((vector_size(8 * sizeof(float)), aligned(4)));
#if defined(__clang__)
#define SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else /* GCC: __builtin_shufflevector only from GCC 12; __builtin_shuffle since 4.7 */
typedef int32_t v8i __attribute__((vector_size(8 * sizeof(int32_t))));
#define SHUF(a, b, ...) __builtin_shuffle(a, b, (v8i){__VA_ARGS__})
#endif
INLINE void transpose8(const float *src, int64_t ls, float *dst, int64_t ld, const float *add, int64_t la) {
    v8 r[8], t[8], u[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) r[i] = *(const v8u *)(src + i * ls);
#pragma GCC unroll 4
    for (int i = 0; i < 8; i += 2) {
        t[i] = SHUF(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[i + 1] = SHUF(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
#pragma GCC unroll 2
    for (int h = 0; h < 8; h += 4) {
        u[h + 0] = SHUF(t[h], t[h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        u[h + 1] = SHUF(t[h], t[h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        u[h + 2] = SHUF(t[h + 1], t[h + 3], 0, 1, 8, 9, 4, 5, 12, 13);
        u[h + 3] = SHUF(t[h + 1], t[h + 3], 2, 3, 10, 11, 6, 7, 14, 15);
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        v8 lo = SHUF(u[j], u[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        v8 hi = SHUF(u[j], u[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
        if (add) {
            lo += *(const v8u *)(add + j * la);
            hi += *(const v8u *)(add + (j + 4) * la);
        }
        *(v8u *)(dst + j * ld) = lo;
        *(v8u *)(dst + (j + 4) * ld) = hi;
    }
}

/* ---- forward: y[n, f, l] = Σ_k patch[n, l, k] · w[l, k, f] + bias[f, l] ---------------------------------
 * y is (N, F, L), torch's layout, written with the bias (NULL: none): a chunk of PB positions is computed
 * into a buffer (PB, N, FV), FV = F rounded up to whole vectors, and stored as runs of y's rows. A partial
 * last block of filters (F not a multiple of VL) is packed per position, zero-padded to whole vectors.
 * Returns 0, or -1 when out of memory. */
int lc_forward(const float *x, int64_t N, int64_t X, const int64_t *offs, int64_t L, int64_t KK, int64_t C,
               const float *w, const float *bias, int64_t F, float *y, int threads) {
    const int64_t K = KK * C;
    const int64_t FV = vectors(F) * VL;
    const int64_t PS = N * FV + PANEL_PAD; /* floats from one position's buffer to the next */
    const int partial = F % VL != 0;
    const int64_t chunks = (L + PB - 1) / PB;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        Scratch s;
        const int ok = scratch_new(&s, N, partial ? K * NB * VL : 0, PB * PS);
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
        if (ok)
            for (int64_t n = 0; n < N; n++) s.a[n] = x + n * X;
#pragma omp for schedule(static)
        for (int64_t chunk = 0; chunk < chunks; chunk++) {
            if (!ok) continue;
            const int64_t l0 = chunk * PB, nl = min64(PB, L - l0);
            for (int64_t j = 0; j < nl; j++) {
                const int64_t l = l0 + j;
                const float *wl = w + l * K * F;
                float *rows = s.rows + j * PS;
                for (int64_t f0 = 0; f0 < F; f0 += NB * VL) { /* blocks of filters */
                    const int64_t nf = min64(NB * VL, F - f0);
                    const int NV = vectors(nf), whole = nf == NV * VL;
                    if (!whole)
                        for (int64_t k = 0; k < K; k++) {
                            memcpy(s.pack + k * NV * VL, wl + k * F + f0, nf * sizeof(float));
                            /* The padding lanes' results are dropped; zeros keep denormal garbage out of them. */
                            memset(s.pack + k * NV * VL + nf, 0, (NV * VL - nf) * sizeof(float));
                        }
                    for (int64_t n = 0; n < N; n++) s.out[n] = rows + n * FV + f0;
                    const int64_t ldw = whole ? F : NV * VL;
                    const Tile t = {.a = s.a, .a_step = 1, .seg = offs + l * KK, .nseg = KK, .len = C,
                                    .b = whole ? wl + f0 : s.pack, .b_seg = C * ldw, .b_step = ldw,
                                    .out = s.out};
                    product(N, NV, t);
                }
            }
            const int64_t f8 = nl == PB ? F / 8 * 8 : 0; /* whole 8 × 8 blocks, transposed in registers */
            for (int64_t n = 0; n < N; n++)
                for (int64_t f = 0; f < f8; f += 8)
                    transpose8(s.rows + n * FV + f, PS, y + (n * F + f) * L + l0, L, bias ? bias + f * L + l0 : 0, L);
            for (int64_t n = 0; n < N; n++)
                for (int64_t f = f8; f < F; f++) {
                    float *yr = y + (n * F + f) * L + l0;
                    const float *r = s.rows + n * FV + f;
                    if (bias) {
                        const float *br = bias + f * L + l0;
                        for (int64_t j = 0; j < nl; j++) yr[j] = r[j * PS] + br[j];
                    } else
                        for (int64_t j = 0; j < nl; j++) yr[j] = r[j * PS];
                }
        }
        scratch_free(&s);
    }
    return failed ? -1 : 0;
}

/* ---- weight gradient: gw[l, k, f] = Σ_n patch[n, l, k] · g[n, f, l] -------------------------------------
 * g is torch's (N, F, L) output gradient; a chunk of PB positions' (N, F) panels is gathered into a buffer
 * (PB, N, FV), zero-padded to whole vectors of filters, so every block is computed whole; a partial last
 * block is written through a buffer. gw is (L, K, F). Returns 0, or -1 when out of memory. */
int lc_grad_weight(const float *x, int64_t N, int64_t X, const int64_t *offs, int64_t L, int64_t KK, int64_t C,
                   const float *g, int64_t F, float *gw, int threads) {
    const int64_t K = KK * C;
    const int64_t FV = vectors(F) * VL; /* panel row: F filters, zero-padded to whole vectors */
    const int64_t PS = N * FV + PANEL_PAD;
    const int partial = F % VL != 0;
    const int64_t chunks = (L + PB - 1) / PB;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        Scratch s;
        const int ok = scratch_new(&s, K, PB * PS, partial ? K * NB * VL : 0);
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        } else
            memset(s.pack, 0, PB * PS * sizeof(float)); /* the padding columns stay zero */
#pragma omp for schedule(static)
        for (int64_t chunk = 0; chunk < chunks; chunk++) {
            if (!ok) continue;
            const int64_t l0 = chunk * PB, nl = min64(PB, L - l0);
            const int64_t f8 = nl == PB ? F / 8 * 8 : 0; /* whole 8 × 8 blocks, transposed in registers */
            for (int64_t n = 0; n < N; n++)
                for (int64_t f = 0; f < f8; f += 8)
                    transpose8(g + (n * F + f) * L + l0, L, s.pack + n * FV + f, PS, 0, 0);
            for (int64_t n = 0; n < N; n++)
                for (int64_t f = f8; f < F; f++) {
                    const float *gr = g + (n * F + f) * L + l0;
                    float *p = s.pack + n * FV + f;
                    for (int64_t j = 0; j < nl; j++) p[j * PS] = gr[j];
                }
            for (int64_t j = 0; j < nl; j++) {
                const int64_t l = l0 + j;
                const int64_t *off = offs + l * KK;
                float *gwl = gw + l * K * F;
                for (int64_t k = 0; k < K; k++) s.a[k] = x + off[k / C] + k % C;
                for (int64_t f0 = 0; f0 < F; f0 += NB * VL) { /* blocks of filters */
                    const int64_t nf = min64(NB * VL, F - f0);
                    const int NV = vectors(nf), whole = nf == NV * VL;
                    for (int64_t k = 0; k < K; k++) s.out[k] = whole ? gwl + k * F + f0 : s.rows + k * NV * VL;
                    const Tile t = {.a = s.a, .a_step = X, .nseg = 1, .len = N, .b = s.pack + j * PS + f0,
                                    .b_step = FV, .out = s.out};
                    product(K, NV, t);
                    if (!whole)
                        for (int64_t k = 0; k < K; k++)
                            memcpy(gwl + k * F + f0, s.rows + k * NV * VL, nf * sizeof(float));
                }
            }
        }
        scratch_free(&s);
    }
    return failed ? -1 : 0;
}

/* ---- input gradient: gx[n, offs[l, kk] + c] += Σ_f g[n, f, l] · w[l, kk·C + c, f] -----------------------
 * g is torch's (N, F, L) output gradient and gx torch's (N, C, *spatial) input gradient, S spatial
 * positions per channel (S·C = the floats of a channels-last sample, which offs indexes). The sums are
 * accumulated batch-last, so that the scatter onto the input is whole-vector adds: the (F, N) panels of a
 * chunk of PB positions are gathered into a buffer of whole vectors of samples (NP = N rounded up,
 * zero-padded), the accumulator is (S·C, NP), and it is written out as (N, C, S) at the end. Positions
 * whose patches overlap must not run at the same time: the output rows (first spatial dimension, `per_row`
 * positions each) are cut into bands of `band` rows, wide enough that bands 2 apart never touch the same
 * input ((band + 1)·stride > dilation·(kernel − 1), which the caller's band ≥ ceil(dilation·(kernel − 1) /
 * stride) satisfies), and the even bands run before the odd. Returns 0, or -1 when out of memory. */
int lc_grad_input(const int64_t *offs, int64_t L, int64_t KK, int64_t C, const float *w, int64_t F,
                  const float *g, int64_t N, int64_t S, float *gx, int64_t per_row, int64_t band, int threads) {
    const int64_t K = KK * C;
    const int64_t NP = vectors(N) * VL;
    const int64_t PS = F * NP + PANEL_PAD;
    const int64_t rows = L / per_row;
    const int64_t bands = (rows + band - 1) / band;
    float *acc = calloc(S * C * NP, sizeof(float));
    if (!acc) return -1;
    int failed = 0;
    for (int phase = 0; phase < 2; phase++) {
#pragma omp parallel num_threads(threads)
        {
            Scratch s;
            const int ok = scratch_new(&s, K, PB * PS, 0);
            if (!ok) {
#pragma omp atomic write
                failed = 1;
            } else
                memset(s.pack, 0, PB * PS * sizeof(float)); /* the padding samples stay zero */
#pragma omp for schedule(dynamic, 1)
            for (int64_t b = phase; b < bands; b += 2) {
                if (!ok) continue;
                const int64_t l1 = min64((b + 1) * band, rows) * per_row;
                for (int64_t l0 = b * band * per_row; l0 < l1; l0 += PB) {
                    const int64_t nl = min64(PB, l1 - l0);
                    const int64_t n8 = nl == PB ? N / 8 * 8 : 0; /* whole 8 × 8 blocks in registers */
                    for (int64_t f = 0; f < F; f++)
                        for (int64_t n = 0; n < n8; n += 8)
                            transpose8(g + (n * F + f) * L + l0, F * L, s.pack + f * NP + n, PS, 0, 0);
                    for (int64_t n = n8; n < N; n++)
                        for (int64_t f = 0; f < F; f++) {
                            const float *gr = g + (n * F + f) * L + l0;
                            float *q = s.pack + f * NP + n;
                            for (int64_t j = 0; j < nl; j++) q[j * PS] = gr[j];
                        }
                    for (int64_t j = 0; j < nl; j++) {
                        const int64_t l = l0 + j;
                        const int64_t *off = offs + l * KK;
                        for (int64_t k = 0; k < K; k++) s.a[k] = w + (l * K + k) * F;
                        for (int64_t n0 = 0; n0 < NP; n0 += NB * VL) { /* blocks of samples, all whole */
                            const int NV = vectors(min64(NB * VL, NP - n0));
                            for (int64_t k = 0; k < K; k++) s.out[k] = acc + (off[k / C] + k % C) * NP + n0;
                            const Tile t = {.a = s.a, .a_step = 1, .nseg = 1, .len = F,
                                            .b = s.pack + j * PS + n0, .b_step = NP, .out = s.out, .add = 1};
                            product(K, NV, t);
                        }
                    }
                }
            }
            scratch_free(&s);
        }
    }
    if (!failed) {
        /* (S·C, NP) -> (N, C, S): blocks of 16 positions, whose C·NP accumulators stay in L1 */
        const int64_t block = 16, blocks = (S + block - 1) / block;
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t cb = 0; cb < C * blocks; cb++) {
            const int64_t c = cb / blocks, s0 = cb % blocks * block, s1 = min64(s0 + block, S);
            for (int64_t n = 0; n < N; n++) {
                float *o = gx + (n * C + c) * S;
                for (int64_t s = s0; s < s1; s++) o[s] = acc[(s * C + c) * NP + n];
            }
        }
    }
    free(acc);
    return failed ? -1 : 0;
}

/* Floats per vector in this build (16 with AVX-512, 8 with AVX, 4 otherwise). */
int lc_vector_width(void) { return VL; }

/* The instruction set and whole-block tile of this build, e.g. "AVX2+FMA, 8-float vectors, 3x4 tile". */
#define STR_(x) #x
#define STR(x) STR_(x)
#if defined(__AVX512F__)
#define ISA "AVX-512"
#elif defined(__AVX2__) && defined(__FMA__)
#define ISA "AVX2+FMA"
#elif defined(__AVX__) && defined(__FMA__)
#define ISA "AVX+FMA"
#elif defined(__AVX__)
#define ISA "AVX"
#elif defined(__aarch64__)
#define ISA "NEON"
#elif defined(__SSE2__)
#define ISA "SSE2"
#else
#define ISA "generic"
#endif
const char *lc_build(void) { return ISA ", " STR(VL) "-float vectors, " STR(ROWS) "x" STR(NB) " tile"; }
