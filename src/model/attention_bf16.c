/* attention_bf16.c — attention's two products at the reduced precisions.
 *
 * For one (sequence, head) pair, attention_forward computes
 *   scores = Q K^T        [nq, len]   (then scale and softmax, in fp32)
 *   out    = P V          [nq, hd]
 * At bf16 and int8 these two run with bf16 inputs (Q, K, V and the
 * probabilities P rounded to nearest even) and fp32 sums, as PyTorch's
 * bf16 autocast and OpenVINO's bf16 do. Where the CPU has AMX they run on
 * its tiles: TDPBF16PS multiplies a 16 x 32 bf16 tile by a 32 x 16 one
 * (stored as 16 rows of 16 pairs, the "VNNI" layout) into a 16 x 16 fp32
 * tile. Where it has AVX512-BF16 but no AMX (AMD's Zen 4), VDPBF16PS
 * multiplies one pair of A broadcast against 16 pairs of the same VNNI
 * layout. Elsewhere the same bf16 values are multiplied by sgemm. All
 * three give the same numbers up to the order of the fp32 sums.
 *
 * Why: at fp32 the two products are tiny GEMMs (50 x 50 x 64 per head for
 * ViT-B-32) that sgemm runs far below its peak; with the linear layers on
 * AMX they were about 9% of the bf16 encoder's time here (perf).
 *
 * Layouts in the per-thread scratch (Mp = nq padded to 16 rows, Sp = len
 * padded to 64 keys, Dp = hd padded to 64; padding is zeros, so it adds
 * nothing to the sums):
 *   qb [Mp][Dp] bf16        Q, row-major (tile A of Q K^T)
 *   kb [Sp][Dp] bf16        K, row-major (transposed in 16 x 16 blocks of pairs into kv)
 *   kv [Dp/2][Sp] pairs     K^T in VNNI: pair p of key j = (K[j][2p], K[j][2p+1])
 *   pb [Mp][Sp] bf16        P, row-major (tile A of P V)
 *   vv [Sp/2][Dp] pairs     V in VNNI: pair (j/2, d) = (V[2j'][d], V[2j'+1][d])
 *   ob [Mp][Dp] fp32        the product's tiles, before copying out */
#include "tower.h"

#include <cblas.h>
#include <cpuid.h>
#include <immintrin.h>
#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023 /* Linux: ask for the AMX tile state */
#define XFEATURE_XTILEDATA 18

static int best_kernel = -1; /* ATTENTION_BF16_*: the fastest this CPU (and oneDNN's cap) allows */
static int kernel_in_use = -1;
static pthread_once_t kernel_once = PTHREAD_ONCE_INIT;

static bool amx_usable(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    bool tile = d & (1u << 24), bf16 = d & (1u << 22);
    if (!tile || !bf16 || !__builtin_cpu_supports("avx512bf16")) return false;
    if ((dnnl_get_effective_cpu_isa() & dnnl_cpu_isa_avx512_core_amx) != dnnl_cpu_isa_avx512_core_amx) return false;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0; /* 0: the kernel allows AMX */
}

/* oneDNN's cap applies here too: ONEDNN_MAX_CPU_ISA below AMX or
 * AVX512-BF16 (tests exercising the other paths) turns these kernels off
 * as well. */
static void kernel_probe(void) {
    if (amx_usable())
        best_kernel = ATTENTION_BF16_AMX;
    else if (__builtin_cpu_supports("avx512bf16") &&
             (dnnl_get_effective_cpu_isa() & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16)
        best_kernel = ATTENTION_BF16_DOTS;
    else
        best_kernel = ATTENTION_BF16_SGEMM;
    kernel_in_use = best_kernel;
}

int attention_bf16_best(void) {
    pthread_once(&kernel_once, kernel_probe);
    return best_kernel;
}

int attention_bf16_use(int kernel) {
    int best = attention_bf16_best();
    kernel_in_use = kernel > best ? best : kernel < 0 ? best : kernel;
    return kernel_in_use;
}

static int kernel_now(void) {
    pthread_once(&kernel_once, kernel_probe);
    return kernel_in_use;
}

const char *attention_bf16_name(int kernel) {
    return kernel == ATTENTION_BF16_AMX ? "AMX tiles" : kernel == ATTENTION_BF16_DOTS ? "AVX512-BF16 dot products" : "sgemm";
}

static int round_up(int v, int to) { return (v + to - 1) / to * to; }

int attention_bf16_stride(int len) { return round_up(len, 64); }

/* The pieces of one thread's scratch (each on a 64-byte boundary). */
typedef struct {
    uint16_t *qb, *pb, *kb;
    uint32_t *kv, *vv;
    float *ob;
} bf16_scratch;

static size_t pad16(size_t floats) { return (floats + 15) / 16 * 16; }

size_t attention_bf16_scratch(int max_len, int hd) {
    size_t Mp = (size_t)round_up(max_len, 16), Sp = (size_t)attention_bf16_stride(max_len),
           Dp = (size_t)round_up(hd, 64);
    /* the emulation's float copies (Q, K | P, V) fit in the same room */
    size_t amx = pad16(Mp * Dp / 2) + pad16(Mp * Sp / 2) + 3 * pad16(Dp * Sp / 2) + pad16(Mp * Dp);
    size_t emulated = pad16(Mp * Dp) + pad16(Sp * Dp) + pad16(Mp * Sp);
    return (amx > emulated ? amx : emulated) + 16;
}

static bf16_scratch carve(float *s, int Mp, int Sp, int Dp) {
    bf16_scratch b;
    s = (float *)(((uintptr_t)s + 63) & ~(uintptr_t)63);
    b.qb = (uint16_t *)s, s += pad16((size_t)Mp * Dp / 2);
    b.pb = (uint16_t *)s, s += pad16((size_t)Mp * Sp / 2);
    b.kb = (uint16_t *)s, s += pad16((size_t)Sp * Dp / 2);
    b.kv = (uint32_t *)s, s += pad16((size_t)Dp * Sp / 2);
    b.vv = (uint32_t *)s, s += pad16((size_t)Sp * Dp / 2);
    b.ob = s;
    return b;
}

/* ---- AMX ------------------------------------------------------------------------- */

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Every tile 16 rows of 64 bytes. Loaded on every call: oneDNN's kernels
 * configure the tiles their own way in between. */
__attribute__((target("amx-tile"))) static void tiles_configure(void) {
    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    _tile_loadconfig(&cfg);
}

/* n floats to bf16 (nearest even), zeros up to `to` (a multiple of 16). */
__attribute__((target("avx512f,avx512bf16,avx512vl"))) static void row_bf16(uint16_t *dst, const float *src, int n,
                                                                          int to) {
    for (int j = 0; j < to; j += 16) {
        int left = n - j;
        __mmask16 in = left >= 16 ? (__mmask16)0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
        __m512 x = _mm512_maskz_loadu_ps(in, src + j);
        _mm256_storeu_si256((__m256i *)(dst + j), (__m256i)_mm512_cvtneps_pbh(x));
    }
}

/* rows of n floats (ld apart) to bf16 rows of `to` (zeros past n), then
 * zero rows up to rows_to. */
__attribute__((target("avx512f,avx512bf16,avx512vl"))) static void rows_bf16(uint16_t *dst, int to, const float *src,
                                                                           int ld, int rows, int n, int rows_to) {
    for (int i = 0; i < rows; i++) row_bf16(dst + (size_t)i * to, src + (size_t)i * ld, n, to);
    if (rows_to > rows) memset(dst + (size_t)rows * to, 0, (size_t)(rows_to - rows) * to * 2);
}

/* C [Mp, N] (rows ldc floats apart) = A [Mp, K] B, A bf16 row-major (rows
 * K apart), B in VNNI pairs [K/2][N] (rows ldb pairs apart); Mp a multiple
 * of 16, N of 64, K of 32. Four accumulator tiles cover 16 x 64 of C. */
__attribute__((target("amx-tile,amx-bf16"))) static void tiles_gemm(float *C, int ldc, const uint16_t *A,
                                                                    const uint32_t *B, int ldb, int Mp, int N, int K) {
    for (int m0 = 0; m0 < Mp; m0 += 16)
        for (int n0 = 0; n0 < N; n0 += 64) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int k0 = 0; k0 < K; k0 += 32) {
                const uint32_t *b = B + (size_t)(k0 / 2) * ldb + n0;
                _tile_loadd(4, A + (size_t)m0 * K + k0, K * 2);
                _tile_loadd(5, b, ldb * 4);
                _tile_dpbf16ps(0, 4, 5);
                _tile_loadd(6, b + 16, ldb * 4);
                _tile_dpbf16ps(1, 4, 6);
                _tile_loadd(7, b + 32, ldb * 4);
                _tile_dpbf16ps(2, 4, 7);
                _tile_loadd(5, b + 48, ldb * 4);
                _tile_dpbf16ps(3, 4, 5);
            }
            float *c = C + (size_t)m0 * ldc + n0;
            _tile_stored(0, c, ldc * 4);
            _tile_stored(1, c + 16, ldc * 4);
            _tile_stored(2, c + 32, ldc * 4);
            _tile_stored(3, c + 48, ldc * 4);
        }
}

/* ---- AVX512-BF16 ------------------------------------------------------------------ */

/* C [rows, 64] (rows ldc floats apart) = A [rows, K] B for rows <= 4: A
 * bf16 row-major (rows lda apart), B the VNNI pairs tiles_gemm reads
 * (rows ldb pairs apart). Each step broadcasts one pair of each A row and
 * multiplies it with 64 columns' pairs: VDPBF16PS adds both products of
 * a pair into each fp32 lane. 16 accumulators, 4 B vectors and one
 * broadcast stay in registers. */
__attribute__((target("avx512f,avx512bf16"), always_inline)) static inline void
dots_block(float *C, int ldc, const uint16_t *A, int lda, const uint32_t *B, int ldb, int rows, int K) {
    __m512 acc[4][4];
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < 4; v++) acc[r][v] = _mm512_setzero_ps();
    for (int p = 0; p < K / 2; p++) {
        const uint32_t *b = B + (size_t)p * ldb;
        __m512bh bv[4];
        for (int v = 0; v < 4; v++) bv[v] = (__m512bh)_mm512_loadu_si512((const void *)(b + 16 * v));
        for (int r = 0; r < rows; r++) {
            uint32_t pair;
            memcpy(&pair, A + (size_t)r * lda + 2 * p, sizeof pair);
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)pair);
            for (int v = 0; v < 4; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, bv[v]);
        }
    }
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < 4; v++) _mm512_storeu_ps(C + (size_t)r * ldc + 16 * v, acc[r][v]);
}

/* C [M, N] = A [M, K] B as tiles_gemm computes it, for any M; N a
 * multiple of 64, K of 2. */
__attribute__((target("avx512f,avx512bf16"))) static void dots_gemm(float *C, int ldc, const uint16_t *A, int lda,
                                                                   const uint32_t *B, int ldb, int M, int N, int K) {
    for (int n0 = 0; n0 < N; n0 += 64) {
        int m0 = 0;
        for (; m0 + 4 <= M; m0 += 4) dots_block(C + (size_t)m0 * ldc + n0, ldc, A + (size_t)m0 * lda, lda, B + n0, ldb, 4, K);
        float *c = C + (size_t)m0 * ldc + n0;
        const uint16_t *a = A + (size_t)m0 * lda;
        switch (M - m0) { /* (constant row counts, so each block stays in registers) */
        case 3: dots_block(c, ldc, a, lda, B + n0, ldb, 3, K); break;
        case 2: dots_block(c, ldc, a, lda, B + n0, ldb, 2, K); break;
        case 1: dots_block(c, ldc, a, lda, B + n0, ldb, 1, K); break;
        default: break;
        }
    }
}

/* r[i][j] <- r[j][i] for 16 x 16 dwords (here bf16 pairs; the shuffles
 * move bits, the float type is only the intrinsics'). Within 128-bit
 * lanes by unpack and shuffle, then across lanes in two rounds. */
__attribute__((target("avx512f"))) static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);     /* a0 b0 a1 b1 per lane */
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]); /* a2 b2 a3 b3 */
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));     /* a0 b0 c0 d0 */
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2)); /* a1 b1 c1 d1 */
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    /* r[4g + c] lane L holds column 4L + c of rows 4g..4g+3 */
    for (int c = 0; c < 4; c++) {
        t[c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);      /* columns c, 8 + c of rows 0-7 */
        t[4 + c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);  /* columns 4 + c, 12 + c */
        t[8 + c] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
        t[12 + c] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
    }
    for (int c = 0; c < 4; c++) {
        r[c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0x88);          /* column c */
        r[8 + c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0xdd);      /* column 8 + c */
        r[4 + c] = _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0x88); /* column 4 + c */
        r[12 + c] = _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0xdd);
    }
}

__attribute__((target("avx512f,avx512bf16,avx512vl"))) static void scores_paired(float *scores, int lds, const float *q,
                                                                               const float *k, int ld, int nq, int len,
                                                                               int hd, bool amx, bf16_scratch b) {
    int Mp = round_up(nq, 16), Sp = attention_bf16_stride(len), Dp = round_up(hd, 64);
    rows_bf16(b.qb, Dp, q, ld, nq, hd, amx ? Mp : nq); /* (zero rows up to the tile: AMX only) */
    /* K^T in pairs: pair p of key j is dword p of key j's bf16 row */
    rows_bf16(b.kb, Dp, k, ld, len, hd, Sp);
    const uint32_t *kb = (const uint32_t *)b.kb;
    for (int j0 = 0; j0 < Sp; j0 += 16)
        for (int p0 = 0; p0 < Dp / 2; p0 += 16) {
            __m512 r[16];
            for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps((const float *)(kb + (size_t)(j0 + i) * (Dp / 2) + p0));
            transpose16(r);
            for (int p = 0; p < 16; p++) _mm512_storeu_ps((float *)(b.kv + (size_t)(p0 + p) * Sp + j0), r[p]);
        }
    if (!amx) {
        dots_gemm(scores, lds, b.qb, Dp, b.kv, Sp, nq, Sp, Dp);
        return;
    }
    tiles_configure();
    tiles_gemm(scores, lds, b.qb, b.kv, Sp, Mp, Sp, Dp);
}

__attribute__((target("avx512f,avx512bf16,avx512vl"))) static void values_paired(float *out, int ldo, const float *p,
                                                                               int lds, const float *v, int ld, int nq,
                                                                               int len, int hd, bool amx,
                                                                               bf16_scratch b) {
    int Mp = round_up(nq, 16), Sp = attention_bf16_stride(len), Dp = round_up(hd, 64);
    rows_bf16(b.pb, Sp, p, lds, nq, len, amx ? Mp : nq);
    /* V in pairs of keys: dword d of pair row r = V[2r][d] | V[2r + 1][d] << 16 */
    uint16_t even[Dp], odd[Dp];
    for (int r = 0; r < Sp / 2; r++) {
        int j = 2 * r;
        if (j < len) row_bf16(even, v + (size_t)j * ld, hd, Dp);
        else memset(even, 0, sizeof even);
        if (j + 1 < len) row_bf16(odd, v + (size_t)(j + 1) * ld, hd, Dp);
        else memset(odd, 0, sizeof odd);
        uint32_t *dst = b.vv + (size_t)r * Dp;
        for (int d = 0; d < Dp; d += 16) {
            __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(even + d)));
            __m512i hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(odd + d)));
            _mm512_storeu_si512((void *)(dst + d), _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
    if (!amx) { /* straight into out where hd is a multiple of 64, else through ob */
        bool direct = hd == Dp;
        dots_gemm(direct ? out : b.ob, direct ? ldo : Dp, b.pb, Sp, b.vv, Dp, nq, Dp, Sp);
        for (int i = 0; !direct && i < nq; i++) memcpy(out + (size_t)i * ldo, b.ob + (size_t)i * Dp, (size_t)hd * sizeof *out);
        return;
    }
    tiles_configure();
    /* whole tiles straight into out where they fit (rows of 16 queries, hd a multiple of 64) */
    int direct = hd == Dp ? nq / 16 * 16 : 0;
    if (direct) tiles_gemm(out, ldo, b.pb, b.vv, Dp, direct, Dp, Sp);
    if (direct < nq) {
        tiles_gemm(b.ob, Dp, b.pb + (size_t)direct * Sp, b.vv, Dp, Mp - direct, Dp, Sp);
        for (int i = direct; i < nq; i++)
            memcpy(out + (size_t)i * ldo, b.ob + (size_t)(i - direct) * Dp, (size_t)hd * sizeof *out);
    }
}

/* ---- the same numbers on sgemm ------------------------------------------------------ */

/* rows x n floats (ld apart) rounded to bf16, kept as floats [rows][n]. */
static void rounded(float *dst, const float *src, int ld, int rows, int n) {
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < n; j++) dst[(size_t)i * n + j] = bf16_to_f32(f32_to_bf16(src[(size_t)i * ld + j]));
}

/* ---- entry points ---------------------------------------------------------------------- */

void attention_scores_bf16(float *scores, int lds, const float *q, const float *k, int ld, int nq, int len, int hd,
                           float *scratch) {
    int Mp = round_up(nq, 16), Sp = attention_bf16_stride(len), Dp = round_up(hd, 64);
    int kernel = kernel_now();
    if (kernel != ATTENTION_BF16_SGEMM) {
        scores_paired(scores, lds, q, k, ld, nq, len, hd, kernel == ATTENTION_BF16_AMX, carve(scratch, Mp, Sp, Dp));
        return;
    }
    float *qf = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63), *kf = qf + pad16((size_t)Mp * Dp);
    rounded(qf, q, ld, nq, hd);
    rounded(kf, k, ld, len, hd);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, len, hd, 1.0f, qf, hd, kf, hd, 0.0f, scores, lds);
}

void attention_values_bf16(float *out, int ldo, const float *p, int lds, const float *v, int ld, int nq, int len,
                           int hd, float *scratch) {
    int Mp = round_up(nq, 16), Sp = attention_bf16_stride(len), Dp = round_up(hd, 64);
    int kernel = kernel_now();
    if (kernel != ATTENTION_BF16_SGEMM) {
        values_paired(out, ldo, p, lds, v, ld, nq, len, hd, kernel == ATTENTION_BF16_AMX, carve(scratch, Mp, Sp, Dp));
        return;
    }
    float *pf = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63), *vf = pf + pad16((size_t)Mp * Sp);
    rounded(pf, p, lds, nq, len);
    rounded(vf, v, ld, len, hd);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hd, len, 1.0f, pf, len, vf, hd, 0.0f, out, ldo);
}
