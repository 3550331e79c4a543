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
 * The caller pads its batch-last layouts to multiples of 16 floats, a multiple of every VL here. */
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

/* ---- forward: y[n, l, f] = Σ_k patch[n, l, k] · w[l, k, f] ---------------------------------------------
 * y is (N, L, F). A partial last block of filters (F not a multiple of VL) is packed per position,
 * zero-padded to whole vectors, and its rows are written through a buffer. Returns 0, or -1 when out of
 * memory. */
int lc_forward(const float *x, int64_t N, int64_t X, const int64_t *offs, int64_t L, int64_t KK, int64_t C,
               const float *w, int64_t F, float *y, int threads) {
    const int64_t K = KK * C;
    const int partial = F % VL != 0;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        Scratch s;
        const int ok = scratch_new(&s, N, partial ? K * NB * VL : 0, partial ? N * NB * VL : 0);
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
        if (ok)
            for (int64_t n = 0; n < N; n++) s.a[n] = x + n * X;
#pragma omp for schedule(static)
        for (int64_t l = 0; l < L; l++) {
            if (!ok) continue;
            const float *wl = w + l * K * F;
            for (int64_t f0 = 0; f0 < F; f0 += NB * VL) { /* blocks of filters */
                const int64_t nf = min64(NB * VL, F - f0);
                const int NV = vectors(nf), whole = nf == NV * VL;
                if (!whole)
                    for (int64_t k = 0; k < K; k++) {
                        memcpy(s.pack + k * NV * VL, wl + k * F + f0, nf * sizeof(float));
                        /* The padding lanes' results are dropped; zeros keep denormal garbage out of them. */
                        memset(s.pack + k * NV * VL + nf, 0, (NV * VL - nf) * sizeof(float));
                    }
                for (int64_t n = 0; n < N; n++)
                    s.out[n] = whole ? y + n * L * F + l * F + f0 : s.rows + n * NV * VL;
                const int64_t ldw = whole ? F : NV * VL;
                const Tile t = {.a = s.a, .a_step = 1, .seg = offs + l * KK, .nseg = KK, .len = C,
                                .b = whole ? wl + f0 : s.pack, .b_seg = C * ldw, .b_step = ldw, .out = s.out};
                product(N, NV, t);
                if (!whole)
                    for (int64_t n = 0; n < N; n++)
                        memcpy(y + n * L * F + l * F + f0, s.rows + n * NV * VL, nf * sizeof(float));
            }
        }
        scratch_free(&s);
    }
    return failed ? -1 : 0;
}

/* ---- weight gradient: gw[l, k, f] = Σ_n patch[n, l, k] · g[l, n, f] -------------------------------------
 * g is (L, N, FP), FP = F rounded up to whole vectors and zero-padded, so every block is computed whole;
 * a partial last block is written through a buffer. gw is (L, K, F). Returns 0, or -1 when out of memory. */
int lc_grad_weight(const float *x, int64_t N, int64_t X, const int64_t *offs, int64_t L, int64_t KK, int64_t C,
                   const float *g, int64_t F, int64_t FP, float *gw, int threads) {
    const int64_t K = KK * C;
    const int partial = F % VL != 0;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        Scratch s;
        const int ok = scratch_new(&s, K, 0, partial ? K * NB * VL : 0);
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t l = 0; l < L; l++) {
            if (!ok) continue;
            const int64_t *off = offs + l * KK;
            float *gwl = gw + l * K * F;
            for (int64_t k = 0; k < K; k++) s.a[k] = x + off[k / C] + k % C;
            for (int64_t f0 = 0; f0 < F; f0 += NB * VL) { /* blocks of filters */
                const int64_t nf = min64(NB * VL, F - f0);
                const int NV = vectors(nf), whole = nf == NV * VL;
                for (int64_t k = 0; k < K; k++) s.out[k] = whole ? gwl + k * F + f0 : s.rows + k * NV * VL;
                const Tile t = {.a = s.a, .a_step = X, .nseg = 1, .len = N, .b = g + l * N * FP + f0,
                                .b_step = FP, .out = s.out};
                product(K, NV, t);
                if (!whole)
                    for (int64_t k = 0; k < K; k++)
                        memcpy(gwl + k * F + f0, s.rows + k * NV * VL, nf * sizeof(float));
            }
        }
        scratch_free(&s);
    }
    return failed ? -1 : 0;
}

/* ---- input gradient: gx[n, offs[l, kk] + c] += Σ_f g[l, f, n] · w[l, kk·C + c, f] -----------------------
 * Computed batch-last so that the scatter onto the input is whole-vector adds: gt is (L, F, NP) and gx is
 * (X, NP), NP = N rounded up to whole vectors, both zero-padded (the caller zeroes gx). Positions whose
 * patches overlap must not run at the same time: the output rows (first spatial dimension, `per_row`
 * positions each) are cut into bands of `band` rows, wide enough that bands 2 apart never touch the same
 * input ((band + 1)·stride > dilation·(kernel − 1), which the caller's band ≥ ceil(dilation·(kernel − 1) /
 * stride) satisfies), and the even bands run before the odd. Returns 0, or -1 when out of memory. */
int lc_grad_input(const int64_t *offs, int64_t L, int64_t KK, int64_t C, const float *w, int64_t F,
                  const float *gt, int64_t NP, float *gx, int64_t per_row, int64_t band, int threads) {
    const int64_t K = KK * C;
    const int64_t rows = L / per_row;
    const int64_t bands = (rows + band - 1) / band;
    int failed = 0;
    for (int phase = 0; phase < 2; phase++) {
#pragma omp parallel num_threads(threads)
        {
            Scratch s;
            const int ok = scratch_new(&s, K, 0, 0);
            if (!ok) {
#pragma omp atomic write
                failed = 1;
            }
#pragma omp for schedule(dynamic, 1)
            for (int64_t b = phase; b < bands; b += 2) {
                if (!ok) continue;
                const int64_t l1 = min64((b + 1) * band, rows) * per_row;
                for (int64_t l = b * band * per_row; l < l1; l++) {
                    const int64_t *off = offs + l * KK;
                    for (int64_t k = 0; k < K; k++) s.a[k] = w + (l * K + k) * F;
                    for (int64_t n0 = 0; n0 < NP; n0 += NB * VL) { /* blocks of samples, all whole */
                        const int NV = vectors(min64(NB * VL, NP - n0));
                        for (int64_t k = 0; k < K; k++) s.out[k] = gx + (off[k / C] + k % C) * NP + n0;
                        const Tile t = {.a = s.a, .a_step = 1, .nseg = 1, .len = F, .b = gt + l * F * NP + n0,
                                        .b_step = NP, .out = s.out, .add = 1};
                        product(K, NV, t);
                    }
                }
            }
            scratch_free(&s);
        }
    }
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
