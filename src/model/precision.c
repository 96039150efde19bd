/* precision.c — the model's linear layers in bf16 or int8 on oneDNN.
 *
 * fp32 is the reference: every GEMM goes to OpenBLAS's sgemm, unchanged.
 * At a reduced precision each weight matrix W [out, in] of the towers'
 * linear layers is converted once, when the precision is set, into
 *   bf16:  W rounded to bfloat16 (round to nearest even), same layout;
 *   int8:  q [out, in] int8 and scale [out], W[r, :] ~ scale[r] q[r, :]
 *          (symmetric, per output channel).
 * A GEMM y (=|+=) x W^T + b then
 *   bf16:  rounds x to bf16 and runs oneDNN's bf16 matmul (fp32
 *          accumulation and output, the bias and the residual add fused);
 *   int8:  quantises each row of x on the fly (dynamic, symmetric, per
 *          token: one scale per row, so an outlier token cannot crush the
 *          resolution of the others), runs oneDNN's s8 x s8 -> s32 matmul,
 *          and dequantises with row scale x column scale, plus the bias.
 * Where oneDNN has a blocked weight layout for its kernel (AMX), the
 * weights are reordered into it once (pack_weight), a bf16 weight of
 * 2,048 inputs or more as chunks of inputs (k_chunk_for); elsewhere they
 * keep the [out, in] layout ("ba" for oneDNN's K x N). Either way a row
 * range of W on the layout's blocks (the pruned last block's q and k/v
 * parts) is a pointer offset.
 *
 * oneDNN picks its kernel at run time (AMX, AVX512-BF16/VNNI, AVX-512,
 * AVX2; ONEDNN_MAX_CPU_ISA caps it). Where its kernel is missing, slower
 * than sgemm or inexact (bf16 without AMX, int8 without VNNI: see
 * precision_native_why), the same arithmetic is emulated on sgemm:
 * bf16-rounded weights and inputs, or int8 values held in floats, so the
 * numbers match the native path's within float rounding. */
#include "tower.h"

#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- names ----------------------------------------------------------------- */

const char *clipc_precision_name(int precision) {
    switch (precision) {
    case CLIPC_FP32: return "fp32";
    case CLIPC_BF16: return "bf16";
    case CLIPC_INT8: return "int8";
    default: return "?";
    }
}

int clipc_precision_parse(const char *s, int *precision, clipc_error *err) {
    for (int p = CLIPC_FP32; p <= CLIPC_INT8; p++)
        if (s && !strcmp(s, clipc_precision_name(p))) {
            *precision = p;
            return 0;
        }
    return clipc_fail(err, "unknown precision '%s' (fp32, bf16 or int8)", s ? s : "");
}

/* ---- the oneDNN engine, one per process ---------------------------------- */

static dnnl_engine_t engine;
static int engine_status = -1; /* dnnl_status_t of the creation */
static pthread_once_t engine_once = PTHREAD_ONCE_INIT;

static void engine_create(void) { engine_status = (int)dnnl_engine_create(&engine, dnnl_cpu, 0); }

static dnnl_engine_t get_engine(void) {
    pthread_once(&engine_once, engine_create);
    return engine_status == dnnl_success ? engine : NULL;
}

/* The weights' descriptor: W [N, K] row-major with rows ldw apart ("ba"
 * for oneDNN's K x N; ldw > K for a chunk of W's columns), oneDNN's
 * blocked layout tag, or (tag WEIGHTS_EXACT) the descriptor `exact` of a
 * layout no tag names (see pack_weight). */
enum { WEIGHTS_EXACT = -1 };

static dnnl_status_t weights_desc(dnnl_memory_desc_t *md, dnnl_data_type_t type, int K, int N, int tag, int ldw,
                                  const dnnl_memory_desc_t *exact) {
    if (tag == WEIGHTS_EXACT) {
        if (!exact) return dnnl_invalid_arguments;
        *md = *exact;
        return dnnl_success;
    }
    if (tag) return dnnl_memory_desc_init_by_tag(md, 2, (dnnl_dims_t){K, N}, type, (dnnl_format_tag_t)tag);
    return dnnl_memory_desc_init_by_strides(md, 2, (dnnl_dims_t){K, N}, type, (dnnl_dims_t){1, ldw});
}

/* A matmul primitive for y[M, N] = x[M, K] W^T (+ b) (+ y), with x rows ldx
 * apart, W as weights_desc describes it with wtag and wexact (plain: rows
 * ldw apart), and y rows ldy apart.
 * Creating one costs about 1.5 us here (oneDNN caches its kernels), so
 * none is kept. NULL when oneDNN has no fast kernel for it on this CPU;
 * impl (if non-NULL) receives the kernel name. */
static dnnl_primitive_t matmul_primitive(dnnl_data_type_t in_type, dnnl_data_type_t out_type, int M, int K, int N,
                                         int ldx, int ldw, int ldy, int wtag, const dnnl_memory_desc_t *wexact, bool bias,
                                         bool accumulate, int act, char *impl, size_t impl_cap) {
    dnnl_engine_t eng = get_engine();
    if (!eng) return NULL;
    dnnl_memory_desc_t src, wei, dst, bia;
    dnnl_dims_t sd = {M, K}, dd = {M, N}, bd = {1, N};
    if (dnnl_memory_desc_init_by_strides(&src, 2, sd, in_type, (dnnl_dims_t){ldx, 1}) ||
        weights_desc(&wei, in_type, K, N, wtag, ldw, wexact) ||
        dnnl_memory_desc_init_by_strides(&dst, 2, dd, out_type, (dnnl_dims_t){ldy, 1}) ||
        dnnl_memory_desc_init_by_strides(&bia, 2, bd, dnnl_f32, (dnnl_dims_t){N, 1}))
        return NULL;
    dnnl_matmul_desc_t md;
    if (dnnl_matmul_desc_init(&md, &src, &wei, bias ? &bia : NULL, &dst)) return NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    if (accumulate || act >= 0) {
        /* QuickGELU x sigmoid(1.702 x) is oneDNN's swish with alpha 1.702 */
        dnnl_alg_kind_t alg = act == CLIPC_GELU        ? dnnl_eltwise_gelu_erf
                              : act == CLIPC_GELU_TANH ? dnnl_eltwise_gelu_tanh
                                                       : dnnl_eltwise_swish;
        float alpha = act == CLIPC_QUICK_GELU ? 1.702f : 0.0f;
        if (dnnl_primitive_attr_create(&attr) || dnnl_post_ops_create(&po) ||
            (accumulate && dnnl_post_ops_append_sum(po, 1.0f)) ||
            (act >= 0 && dnnl_post_ops_append_eltwise(po, 1.0f, alg, alpha, 0.0f)) ||
            dnnl_primitive_attr_set_post_ops(attr, po)) {
            dnnl_post_ops_destroy(po);
            dnnl_primitive_attr_destroy(attr);
            return NULL;
        }
    }
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t p = NULL;
    if (dnnl_primitive_desc_create(&pd, &md, attr, eng, NULL) == dnnl_success) {
        const char *s = NULL;
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &s);
        if (impl) snprintf(impl, impl_cap, "%s", s ? s : "?");
        /* oneDNN's reference loops ran about 3,000x slower than sgemm here
         * (a strided output on packed weights fell to them): never use them */
        if ((!s || strncmp(s, "ref", 3)) && dnnl_primitive_create(&p, pd) != dnnl_success) p = NULL;
        dnnl_primitive_desc_destroy(pd);
    }
    dnnl_post_ops_destroy(po);
    dnnl_primitive_attr_destroy(attr);
    return p;
}

/* Runs p on the four buffers (bias may be NULL). Returns 0 or -1. */
static int matmul_run(dnnl_primitive_t p, const void *x, dnnl_data_type_t in_type, const void *w, int wtag,
                      const dnnl_memory_desc_t *wexact, const float *b, void *y, dnnl_data_type_t out_type, int M, int K, int N, int ldx, int ldw,
                      int ldy) {
    dnnl_engine_t eng = get_engine();
    dnnl_memory_desc_t src, wei, dst, bia;
    dnnl_dims_t sd = {M, K}, dd = {M, N}, bd = {1, N};
    dnnl_memory_desc_init_by_strides(&src, 2, sd, in_type, (dnnl_dims_t){ldx, 1});
    weights_desc(&wei, in_type, K, N, wtag, ldw, wexact);
    dnnl_memory_desc_init_by_strides(&dst, 2, dd, out_type, (dnnl_dims_t){ldy, 1});
    dnnl_memory_desc_init_by_strides(&bia, 2, bd, dnnl_f32, (dnnl_dims_t){N, 1});
    dnnl_memory_t ms = NULL, mw = NULL, md = NULL, mb = NULL;
    dnnl_stream_t stream = NULL;
    int rc = -1;
    if (dnnl_memory_create(&ms, &src, eng, (void *)x) || dnnl_memory_create(&mw, &wei, eng, (void *)w) ||
        dnnl_memory_create(&md, &dst, eng, y) || (b && dnnl_memory_create(&mb, &bia, eng, (void *)b)) ||
        dnnl_stream_create(&stream, eng, dnnl_stream_default_flags))
        goto done;
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, ms}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, md}, {DNNL_ARG_BIAS, mb}};
    if (dnnl_primitive_execute(p, stream, b ? 4 : 3, args) == dnnl_success && dnnl_stream_wait(stream) == dnnl_success)
        rc = 0;
done:
    dnnl_stream_destroy(stream);
    dnnl_memory_destroy(ms);
    dnnl_memory_destroy(mw);
    dnnl_memory_destroy(md);
    dnnl_memory_destroy(mb);
    return rc;
}

/* Inputs per K-chunk of a packed weight with `in` inputs. oneDNN 2.6's
 * AMX matmul slows down past about 1,536 inputs (measured here, one
 * thread, 800 rows x 768 outputs with the residual add fused: 0.9 ms at
 * K = 768, 2.2 ms at 1,536, 4.3-4.8 ms at 2,048, 6.0-6.5 ms at 3,072), so
 * a weight of 2,048 inputs or more is packed as equal chunks of at most
 * 768, multiplied one after the other into the same sums: ViT-B-32's
 * c_proj (K = 3,072) as four GEMMs of K = 768. In one interleaved run the
 * bf16 encoder went from 120-130 to 139-145 images/s (chunks of 512 and
 * 384 ran the same, 256 slower). int8 keeps whole weights: chunked, it
 * ran 166-167 against 176 images/s at batch 32, and a caption at batch 1
 * 426-436 against 478-493 texts/s. Without AMX (AVX512-BF16 on a Zen 4)
 * whole weights ran the same 45-48 images/s as chunks, and a caption at
 * 284-327 against 259-261 texts/s, so there weights stay whole. */
static int k_chunk_for(int in) {
    bool amx = (dnnl_get_effective_cpu_isa() & dnnl_cpu_isa_avx512_core_amx) == dnnl_cpu_isa_avx512_core_amx;
    if (in < 2048 || !amx) return in; /* AVX512-BF16 (Zen 4): whole weights ran as fast, a caption faster */
    for (int chunks = (in + 767) / 768; chunks <= in / 64; chunks++)
        if (in % chunks == 0 && (in / chunks) % 64 == 0) return in / chunks;
    return in;
}

/* Copies the matrix at `from` (laid out as from_md) to `to` in to_md's
 * layout, by one oneDNN reorder (which also computes any compensation
 * terms to_md carries). false when oneDNN fails. */
static bool reorder_into(void *to, const dnnl_memory_desc_t *to_md, const void *from,
                         const dnnl_memory_desc_t *from_md) {
    dnnl_engine_t eng = get_engine();
    dnnl_primitive_desc_t rpd = NULL;
    dnnl_primitive_t reorder = NULL;
    dnnl_stream_t stream = NULL;
    dnnl_memory_t mf = NULL, mt = NULL;
    bool ok = eng && dnnl_reorder_primitive_desc_create(&rpd, from_md, eng, to_md, eng, NULL) == dnnl_success &&
              dnnl_primitive_create(&reorder, rpd) == dnnl_success &&
              dnnl_stream_create(&stream, eng, dnnl_stream_default_flags) == dnnl_success &&
              dnnl_memory_create(&mf, from_md, eng, (void *)from) == dnnl_success &&
              dnnl_memory_create(&mt, to_md, eng, to) == dnnl_success;
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, mf}, {DNNL_ARG_TO, mt}};
    ok = ok && dnnl_primitive_execute(reorder, stream, 2, args) == dnnl_success &&
         dnnl_stream_wait(stream) == dnnl_success;
    dnnl_memory_destroy(mf);
    dnnl_memory_destroy(mt);
    dnnl_stream_destroy(stream);
    dnnl_primitive_destroy(reorder);
    dnnl_primitive_desc_destroy(rpd);
    return ok;
}

/* w's packed copy becomes `packed` (owned), laid out as tag or desc. */
static void packed_set(lowp_weight *w, void *packed, dnnl_memory_desc_t *desc, int tag, size_t block, int k_chunk,
                       size_t chunk_bytes) {
    free(w->packed);
    free(w->packed_desc);
    w->packed = packed;
    w->packed_desc = desc;
    w->packed_tag = tag;
    w->packed_block = block;
    w->k_chunk = k_chunk;
    w->packed_chunk = chunk_bytes;
}

/* w packed in the layout `exact` describes (see pack_weight). */
static int pack_exact(lowp_weight *w, const dnnl_memory_desc_t *exact, const dnnl_memory_desc_t *from,
                      const void *plain) {
    size_t bytes = dnnl_memory_desc_get_size(exact);
    dnnl_memory_desc_t *desc = malloc(sizeof *desc);
    void *packed = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!desc || !packed) {
        free(desc);
        free(packed);
        return -1;
    }
    if (!reorder_into(packed, exact, plain, from)) { /* stays plain */
        free(desc);
        free(packed);
        return 0;
    }
    *desc = *exact;
    packed_set(w, packed, desc, WEIGHTS_EXACT, 0, w->in, bytes);
    return 0;
}

/* Lays w's plain values out in the blocked layout oneDNN's brgemm kernels
 * read (on AMX: 64 output channels by 16 pairs or quads of inputs,
 * "BA16a64b2a" for bf16, "BA16a64b4a" for int8), once, as k_chunk_for's
 * chunks of inputs one after the other. On plain weights oneDNN repacks
 * them on every call: measured here, a 2-thread bf16 matmul at ViT-B-32's
 * shapes (1600 rows; K x N 768 x 2304, 768 x 3072, 3072 x 768) ran
 * 1,852-2,193 GOP/s on packed weights against 1,532-1,712 on plain ones,
 * and in one interleaved run the ViT-B-32 bf16 encoder went from 125-130
 * to 142-150 images/s. The packed layout is kept only where it is
 * exactly the one oneDNN asks for (its "any" choice) and each block of 64
 * channels is contiguous, so a row range of W starting on a block is a
 * pointer offset. int8 without AMX (VNNI) asks for a layout no tag names:
 * the blocks followed by one compensation term per output channel (the
 * kernel multiplies u8 = s8 + 128 and subtracts 128 times the column
 * sums). That one is kept as its exact descriptor (packed_desc) and used
 * for the whole weight only; row ranges read the plain copy. Measured
 * here (Zen 4, 2 threads, plain against packed): 11 x 512 x 2048 0.078
 * against 0.033 ms, 50 x 768 x 2304 0.31 against 0.20, 1600 x 768 x 3072
 * 10.8 against 9.2. Returns -1 only when out of memory; w stays plain
 * where no layout applies. */
static int pack_weight(lowp_weight *w, dnnl_data_type_t type, const void *plain) {
    dnnl_engine_t eng = get_engine();
    int tag = type == dnnl_bf16 ? dnnl_BA16a64b2a : dnnl_BA16a64b4a;
    size_t elsize = type == dnnl_bf16 ? 2 : 1;
    /* (int8 unchunked: its chunks measured no faster at batch 32 and
     * slower for a caption at batch 1, where each chunk is a call) */
    int kc = type == dnnl_bf16 ? k_chunk_for(w->in) : w->in, chunks = w->in / kc;
    dnnl_memory_desc_t src, wei_any, dst, tagged, from;
    dnnl_matmul_desc_t md;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_dims_t sd = {64, kc}, dd = {64, w->out};
    if (!eng || dnnl_memory_desc_init_by_strides(&src, 2, sd, type, (dnnl_dims_t){kc, 1}) ||
        dnnl_memory_desc_init_by_tag(&wei_any, 2, (dnnl_dims_t){kc, w->out}, type, dnnl_format_tag_any) ||
        dnnl_memory_desc_init_by_tag(&dst, 2, dd, type == dnnl_bf16 ? dnnl_f32 : dnnl_s32, dnnl_ab) ||
        weights_desc(&tagged, type, kc, w->out, tag, 0, NULL) || weights_desc(&from, type, kc, w->out, 0, w->in, NULL) ||
        dnnl_matmul_desc_init(&md, &src, &wei_any, NULL, &dst) || dnnl_primitive_desc_create(&pd, &md, NULL, eng, NULL))
        return 0;
    const dnnl_memory_desc_t *want = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    bool same = want && dnnl_memory_desc_equal(want, &tagged);
    dnnl_memory_desc_t exact;
    bool compensated = !same && want && type == dnnl_s8 && chunks == 1 && want->extra.flags != 0;
    if (compensated) exact = *want;
    dnnl_primitive_desc_destroy(pd);
    if (compensated) return pack_exact(w, &exact, &from, plain);
    const dnnl_blocking_desc_t *bl = &tagged.format_desc.blocking;
    if (!same || bl->strides[1] < bl->strides[0]) return 0; /* channel blocks must be outermost */
    size_t chunk_bytes = (dnnl_memory_desc_get_size(&tagged) + 63) / 64 * 64;
    char *packed = aligned_alloc(64, chunk_bytes * (size_t)chunks);
    if (!packed) return -1;
    bool ok = true;
    for (int c = 0; ok && c < chunks; c++)
        ok = reorder_into(packed + (size_t)c * chunk_bytes, &tagged, (const char *)plain + (size_t)c * kc * elsize, &from);
    if (!ok) { /* stays plain */
        free(packed);
        return 0;
    }
    packed_set(w, packed, NULL, tag, (size_t)bl->strides[1] * elsize, kc, chunk_bytes);
    return 0;
}

/* How many K-chunks the kernel reads w in, and how many inputs each has. */
static int weight_chunks(const lowp_weight *w, int *kc) {
    *kc = w->packed ? w->k_chunk : w->in;
    return w->in / *kc;
}

/* The weights for output rows [row0, row0 + out) and K-chunk `chunk` of
 * w as the kernel reads them: a pointer and its layout tag (0: plain,
 * rows w->in apart). NULL when w is packed and the range does not start
 * on a block of 64 rows and cover whole blocks (or run to the end). */
static const void *weight_rows(const lowp_weight *w, int row0, int out, int chunk, int *tag) {
    *tag = 0;
    if (!w->packed) { /* (one chunk) */
        size_t at = (size_t)row0 * w->in;
        return w->bf16 ? (const void *)(w->bf16 + at) : (const void *)(w->q + at);
    }
    if (w->packed_tag == WEIGHTS_EXACT) { /* the whole weight only (its compensation follows the blocks) */
        if (row0 || out != w->out || chunk) return NULL;
        *tag = WEIGHTS_EXACT;
        return w->packed;
    }
    if (row0 % 64 || (out % 64 && row0 + out != w->out)) return NULL;
    *tag = w->packed_tag;
    return (const char *)w->packed + (size_t)chunk * w->packed_chunk + (size_t)(row0 / 64) * w->packed_block;
}

/* ---- conversions ------------------------------------------------------------- */

/* Round-to-nearest-even of |v| <= 2^22 by the 1.5 * 2^23 trick (vectorises). */
static inline float round_even(float v) { return (v + 12582912.0f) - 12582912.0f; }

/* Symmetric int8 of one row: scale = max|x| / 127, q = round(x / scale). */
static float quantize_row(int8_t *restrict q, const float *restrict x, int n) {
    float amax = 0.0f;
#pragma omp simd reduction(max : amax)
    for (int j = 0; j < n; j++) {
        float a = fabsf(x[j]);
        amax = a > amax ? a : amax; /* a ternary, not fmaxf: that one is a libm call here */
    }
    if (!(amax > 0.0f) || !isfinite(amax)) { /* all zero (or broken): q = 0 keeps NaN out of the GEMM */
        memset(q, 0, (size_t)n);
        return amax > 0.0f ? NAN : 0.0f;
    }
    float inv = 127.0f / amax;
#pragma omp simd
    for (int j = 0; j < n; j++) {
        float r = round_even(x[j] * inv); /* |x * inv| <= 127 (up to rounding) */
        r = r > 127.0f ? 127.0f : r;
        r = r < -127.0f ? -127.0f : r;
        q[j] = (int8_t)(int)r;
    }
    return amax / 127.0f;
}

/* n floats to bf16 (round to nearest even). With AVX512-BF16, one
 * instruction per 32 values; elsewhere the portable rounding. */
__attribute__((target("avx512f,avx512bf16"))) static void to_bf16_avx512(uint16_t *dst, const float *src, int n) {
    int j = 0;
    for (; j + 32 <= n; j += 32) {
        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + j + 16), _mm512_loadu_ps(src + j));
        _mm512_storeu_si512((void *)(dst + j), (__m512i)v);
    }
    for (; j < n; j++) dst[j] = f32_to_bf16(src[j]);
}

static void to_bf16(uint16_t *restrict dst, const float *restrict src, int n) {
    static int avx512bf16 = -1;
    if (avx512bf16 < 0) avx512bf16 = __builtin_cpu_supports("avx512bf16") ? 1 : 0;
    if (avx512bf16) {
        to_bf16_avx512(dst, src, n);
        return;
    }
#pragma omp simd
    for (int j = 0; j < n; j++) dst[j] = f32_to_bf16(src[j]);
}

/* ---- weights ------------------------------------------------------------------- */

static void lowp_weight_free(lowp_weight *w) {
    free(w->bf16);
    free(w->emulated);
    free(w->q);
    free(w->scale);
    free(w->packed);
    free(w->packed_desc);
    memset(w, 0, sizeof *w);
}

void model_lowp_free(clipc_model *m) {
    for (int i = 0; i < m->n_lowp; i++) lowp_weight_free(&m->lowp[i]);
    free(m->lowp);
    m->lowp = NULL;
    m->n_lowp = 0;
}

/* Converts W [w->out, w->in] for the given precision; native says whether
 * oneDNN has a kernel (otherwise the emulation's float copy is made). */
static int lowp_weight_make(lowp_weight *w, const float *W, int precision, bool native) {
    int out = w->out, in = w->in;
    size_t n = (size_t)out * in;
    if (precision == CLIPC_BF16) {
        w->bf16 = malloc(n * sizeof *w->bf16);
        if (!w->bf16) return -1;
#pragma omp parallel for simd if (n > 65536)
        for (size_t i = 0; i < n; i++) w->bf16[i] = f32_to_bf16(W[i]);
        if (!native) {
            if (!(w->emulated = malloc(n * sizeof *w->emulated))) return -1;
            for (size_t i = 0; i < n; i++) w->emulated[i] = bf16_to_f32(w->bf16[i]);
            return 0;
        }
        if (pack_weight(w, dnnl_bf16, w->bf16)) return -1;
        if (w->packed) { /* the plain copy is no longer read */
            free(w->bf16);
            w->bf16 = NULL;
        }
        return 0;
    }
    w->q = malloc(n);
    w->scale = malloc((size_t)out * sizeof *w->scale);
    if (!w->q || !w->scale) return -1;
#pragma omp parallel for if (n > 65536)
    for (int r = 0; r < out; r++) {
        w->scale[r] = quantize_row(w->q + (size_t)r * in, W + (size_t)r * in, in);
        if (!isfinite(w->scale[r])) w->scale[r] = 0.0f;
    }
    if (!native) {
        if (!(w->emulated = malloc(n * sizeof *w->emulated))) return -1;
        for (size_t i = 0; i < n; i++) w->emulated[i] = (float)w->q[i];
        return 0;
    }
    return pack_weight(w, dnnl_s8, w->q); /* the plain q stays: int8 files are written from it */
}

int model_lowp_adopt_int8(lowp_weight *w, const void *q, const void *scale) {
    size_t n = (size_t)w->out * w->in;
    memcpy(w->q, q, n);
    memcpy(w->scale, scale, (size_t)w->out * sizeof *w->scale);
    if (w->emulated) {
        for (size_t i = 0; i < n; i++) w->emulated[i] = (float)w->q[i];
        return 0;
    }
    return pack_weight(w, dnnl_s8, w->q); /* native (only the emulation has no kernel) */
}

/* Every weight matrix the towers multiply by in a linear layer (the
 * [in, out] projections at the towers' ends, one row per input, stay fp32),
 * into w[] when it is non-NULL; returns how many. */
static int gemm_weights(const clipc_model *m, lowp_weight *w) {
    const clipc_config *c = &m->cfg;
    const model_layout *L = &m->L;
    int k = 0;
#define W(o, r, cols) (w ? (w[k] = (lowp_weight){.offset = (o), .out = (r), .in = (cols)}, 0) : 0, k++)
    if (c->vision_tower == CLIPC_VIT) {
        int D = c->vision_width, P = c->vision_patch_size, H = c->vision_mlp_width;
        W(L->v_conv, D, 3 * P * P);
        for (int l = 0; l < c->vision_layers; l++) {
            const block_offsets *b = &L->v_blocks[l];
            W(b->qkv_w, 3 * D, D), W(b->out_w, D, D), W(b->fc_w, H, D), W(b->proj_w, D, H);
        }
        if (c->family == CLIPC_SIGLIP) { /* the MAP head: its keys and values cover every token */
            const block_offsets *b = &L->v_head;
            W(b->qkv_w, 3 * D, D), W(b->out_w, D, D), W(b->fc_w, H, D), W(b->proj_w, D, H);
        }
        if (c->family == CLIPC_COCA) { /* the attentional pooler */
            int E = c->embed_dim;
            W(L->cp_q_w, E, E), W(L->cp_k_w, E, D), W(L->cp_v_w, E, D), W(L->cp_out_w, E, E);
        }
    } else {
        int E = c->vision_width * 32;
        W(L->ap_q_w, E, E), W(L->ap_k_w, E, E), W(L->ap_v_w, E, E), W(L->ap_c_w, c->embed_dim, E);
    }
    int D = c->text_width, H = c->text_mlp_width;
    for (int l = 0; l < c->text_layers; l++) {
        const block_offsets *b = &L->t_blocks[l];
        W(b->qkv_w, 3 * D, D), W(b->out_w, D, D), W(b->fc_w, H, D), W(b->proj_w, D, H);
    }
    for (int l = 0; c->family == CLIPC_COCA && l < c->decoder_layers; l++) /* the decoder's blocks */
        for (int k = 0; k < 2; k++) {
            const block_offsets *b = k ? &L->d_cross[l] : &L->d_self[l];
            W(b->qkv_w, 3 * D, D), W(b->out_w, D, D), W(b->fc_w, H, D), W(b->proj_w, D, H);
        }
#undef W
    return k;
}

/* ---- which kernel runs ------------------------------------------------------ */

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* 12 independent chains of an AVX-512 multiply-add, `steps` times: enough
 * chains to cover its latency times its throughput. In assembly, as a
 * compiler folds or spills such loops written in C (measured here: gcc
 * -O3 reported 470 GFLOP/s of FMAs on a core whose peak is 117). */
#define MULADD_CHAINS(op)                                                                                            \
    op " %%zmm13, %%zmm12, %%zmm0\n\t" op " %%zmm13, %%zmm12, %%zmm1\n\t" op " %%zmm13, %%zmm12, %%zmm2\n\t"     \
    op " %%zmm13, %%zmm12, %%zmm3\n\t" op " %%zmm13, %%zmm12, %%zmm4\n\t" op " %%zmm13, %%zmm12, %%zmm5\n\t"     \
    op " %%zmm13, %%zmm12, %%zmm6\n\t" op " %%zmm13, %%zmm12, %%zmm7\n\t" op " %%zmm13, %%zmm12, %%zmm8\n\t"     \
    op " %%zmm13, %%zmm12, %%zmm9\n\t" op " %%zmm13, %%zmm12, %%zmm10\n\t" op " %%zmm13, %%zmm12, %%zmm11\n\t"
#define MULADD_LOOP(op, steps)                                                                                       \
    __asm__ volatile("vpxord %%zmm12, %%zmm12, %%zmm12\n\tvpxord %%zmm13, %%zmm13, %%zmm13\n"                      \
                     "1:\n\t" MULADD_CHAINS(op) "dec %0\n\tjnz 1b"                                                  \
                     : "+r"(steps)                                                                                   \
                     :                                                                                               \
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",     \
                       "xmm11", "xmm12", "xmm13", "cc")

/* The rate of AVX512-BF16 dot products (vdpbf16ps: 32 multiply-adds) over
 * that of fp32 FMAs (vfmadd231ps: 16), in multiply-adds per second, the
 * best of five interleaved rounds of about 7 us per loop. It tells apart the
 * CPUs where oneDNN's AVX512-BF16 matmul beats sgemm: on AMD's Zen 4
 * (measured here: 2.0, the ViT-B-32 encoder 1.9x faster at bf16 than at
 * fp32) vdpbf16ps issues as often as an FMA; on Intel's Xeons it issues
 * on one port against the FMAs' two (a register loop measured 1.0 on the
 * Xeon of earlier sessions, and oneDNN's bf16 matmul ran 228 GOP/s there,
 * against sgemm's 342 GFLOP/s). */
__attribute__((target("avx512f,avx512bf16"))) static double bf16_dot_rate_over_fma(void) {
    double best_fma = 1e9, best_dot = 1e9;
    for (int round = 0; round < 5; round++) {
        long steps = 2048;
        double t0 = seconds_now();
        MULADD_LOOP("vfmadd231ps", steps);
        double t1 = seconds_now();
        steps = 2048;
        MULADD_LOOP("vdpbf16ps", steps);
        double t2 = seconds_now();
        best_fma = t1 - t0 < best_fma ? t1 - t0 : best_fma;
        best_dot = t2 - t1 < best_dot ? t2 - t1 : best_dot;
    }
    return best_dot > 0.0 ? 2.0 * best_fma / best_dot : 0.0;
}

static double bf16_ratio = -1.0;
static pthread_once_t bf16_ratio_once = PTHREAD_ONCE_INIT;

static void bf16_ratio_measure(void) {
    bf16_ratio = __builtin_cpu_supports("avx512bf16") ? bf16_dot_rate_over_fma() : 0.0;
}

/* Whether oneDNN's kernel for the precision runs here, rather than the
 * emulation on sgemm. int8 needs VNNI: without it oneDNN multiplies with
 * vpmaddubsw, whose 16-bit pair sums saturate (measured here: cosine
 * 0.99935 instead of 0.99987 on ViT-B-32). bf16 needs AMX, or AVX512-BF16
 * dot products at 1.5x the FMA rate or more (bf16_dot_rate_over_fma):
 * elsewhere the emulation computes the same bf16 numbers faster. why (if
 * non-NULL) receives the kernel, or the reason when it does not run. */
static bool precision_native_why(int precision, char *why, size_t cap) {
    char impl[128] = "";
    if (why) why[0] = '\0';
    if (precision == CLIPC_INT8 && !(dnnl_get_effective_cpu_isa() & (0x40 | 0x400))) {
        if (why) snprintf(why, cap, "no int8 kernel with VNNI on this CPU");
        return false;
    }
    bool bf16 = precision == CLIPC_BF16;
    /* a ViT-B-32 MLP shape at batch 32 */
    dnnl_primitive_t p = matmul_primitive(bf16 ? dnnl_bf16 : dnnl_s8, bf16 ? dnnl_f32 : dnnl_s32, 1600, 768, 3072, 768,
                                          768, 3072, 0, NULL, bf16, false, -1, impl, sizeof impl);
    if (!p) {
        if (why) snprintf(why, cap, "no %s kernel on this CPU", clipc_precision_name(precision));
        return false;
    }
    dnnl_primitive_destroy(p);
    if (bf16 && !strstr(impl, "amx")) {
        bool dots = strstr(impl, "avx512_core_bf16") != NULL;
        if (dots) pthread_once(&bf16_ratio_once, bf16_ratio_measure); /* (only where it decides) */
        bool fast = dots && bf16_ratio >= 1.5;
        if (why && fast)
            snprintf(why, cap, "%s (bf16 dot products at %.1fx the FMA rate)", impl, bf16_ratio);
        else if (why && dots)
            snprintf(why, cap, "its bf16 kernel %s is slower than sgemm here (bf16 dot products at %.1fx the FMA rate)",
                     impl, bf16_ratio);
        else if (why)
            snprintf(why, cap, "its bf16 kernel %s has neither AMX nor AVX512-BF16 and is slower than sgemm", impl);
        return fast;
    }
    if (why) snprintf(why, cap, "%s", impl);
    return true;
}

static bool precision_native(int precision) { return precision_native_why(precision, NULL, 0); }

static int by_offset(const void *a, const void *b) {
    size_t x = ((const lowp_weight *)a)->offset, y = ((const lowp_weight *)b)->offset;
    return (x > y) - (x < y);
}

int clipc_model_set_precision(clipc_model *m, int precision, clipc_error *err) {
    return model_set_precision_emulated(m, precision, false, err);
}

int model_set_precision_emulated(clipc_model *m, int precision, bool emulate, clipc_error *err) {
    if (precision < CLIPC_FP32 || precision > CLIPC_INT8) return clipc_fail(err, "unknown precision %d", precision);
    model_lowp_free(m);
    m->precision = precision;
    if (precision == CLIPC_FP32) {
        m->lowp_native = true;
        return 0;
    }
    m->lowp_native = !emulate && precision_native(precision);
    int count = gemm_weights(m, NULL);
    m->lowp = calloc((size_t)count, sizeof *m->lowp);
    int rc = m->lowp ? 0 : -1;
    if (rc == 0) {
        m->n_lowp = gemm_weights(m, m->lowp);
        /* find_weight searches by offset; the list above is in the towers'
         * order, which is not the table's everywhere (the attention pool's
         * q comes before its k in the list, after it in the table) */
        qsort(m->lowp, (size_t)m->n_lowp, sizeof *m->lowp, by_offset);
        for (int i = 0; i < m->n_lowp && rc == 0; i++)
            rc = lowp_weight_make(&m->lowp[i], m->params + m->lowp[i].offset, precision, m->lowp_native);
    }
    if (rc) {
        model_lowp_free(m);
        m->precision = CLIPC_FP32;
        return clipc_fail(err, "out of memory converting the weights to %s", clipc_precision_name(precision));
    }
    return 0;
}

int clipc_model_precision(const clipc_model *m) { return m->precision; }

/* The converted weight holding the matrix that starts at params offset
 * w_off (a whole weight, or a row range inside one); *row0 its first row. */
static const lowp_weight *find_weight(const clipc_model *m, size_t w_off, int *row0) {
    int lo = 0, hi = m->n_lowp - 1;
    const lowp_weight *best = NULL;
    /* sorted by offset: the parameter table is laid out in order */
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (m->lowp[mid].offset <= w_off)
            best = &m->lowp[mid], lo = mid + 1;
        else
            hi = mid - 1;
    }
    if (!best) return NULL;
    size_t rel = w_off - best->offset;
    if (rel % (size_t)best->in || rel / (size_t)best->in >= (size_t)best->out) return NULL;
    *row0 = (int)(rel / (size_t)best->in);
    return best;
}

lowp_weight *model_lowp_find(const clipc_model *m, size_t w_off) {
    int row0 = 0;
    const lowp_weight *w = find_weight(m, w_off, &row0);
    return w && row0 == 0 ? (lowp_weight *)w : NULL;
}

/* ---- the GEMMs ------------------------------------------------------------------------ */

size_t lowp_scratch(int rows, int in, int out) {
    /* converted inputs, accumulators, the MLP's hidden layer, and the
     * emulation's float copies: generous, and never touched at fp32 */
    return (size_t)rows * (2 * (size_t)in + 2 * (size_t)out + 256) + 2 * (size_t)rows + 256;
}

/* act on each of n rows of y (out used floats, ldy apart). */
static void rows_activation(float *y, int ldy, int n, int out, int act) {
    if (act < 0) return;
    if (ldy == out) {
        activation_forward(y, (size_t)n * out, act);
        return;
    }
#pragma omp parallel for if ((size_t)n * out > 65536)
    for (int i = 0; i < n; i++) activation_forward(y + (size_t)i * ldy, (size_t)out, act);
}

/* A bump allocator over the caller's workspace. */
static void *ws_take(float **ws, size_t bytes) {
    void *p = *ws;
    *ws += (bytes + 63) / 64 * 16; /* keep 64-byte alignment */
    return p;
}

/* The inputs of a GEMM on a weight read in K-chunks of kc inputs (see
 * k_chunk_for) are laid out chunk-major, [in / kc][n][kc], so each
 * chunk's GEMM reads a contiguous [n, kc] matrix: oneDNN 2.6's AMX matmul
 * has only its reference loops for rows further apart than K. With one
 * chunk (kc = in) that is the plain [n, in]. */
static inline size_t chunked_at(int i, int j, int n, int kc) {
    return (size_t)(j / kc) * n * kc + (size_t)i * kc + j % kc;
}

/* x [n, in] (rows ldx apart) to bf16, chunk-major. */
static void bf16_rows(uint16_t *xb, const float *x, int ldx, int n, int in, int kc) {
#pragma omp parallel for if ((size_t)n * in > 65536)
    for (int i = 0; i < n; i++)
        for (int j = 0; j < in; j += kc) to_bf16(xb + chunked_at(i, j, n, kc), x + (size_t)i * ldx + j, kc);
}

/* y [n, out] (=|+=) act(t): y float (rows ldy apart) or, with y_bf16,
 * bf16 (rows out apart, no accumulate); t [n, out] is overwritten. */
static void add_rows(void *y, bool y_bf16, int ldy, float *t, int n, int out, bool accumulate, int act) {
#pragma omp parallel for if ((size_t)n * out > 65536)
    for (int i = 0; i < n; i++) {
        float *ti = t + (size_t)i * out;
        if (act >= 0) activation_forward(ti, (size_t)out, act);
        if (y_bf16) {
            to_bf16((uint16_t *)y + (size_t)i * out, ti, out);
            continue;
        }
        float *yi = (float *)y + (size_t)i * ldy;
        if (accumulate) {
#pragma omp simd
            for (int j = 0; j < out; j++) yi[j] += ti[j];
        } else
            memcpy(yi, ti, (size_t)out * sizeof *yi);
    }
}

/* One K-chunk c of y [n, out] (=|+=) act(xc W^T + b): xc [n, kc] bf16, W
 * rows [row0, row0 + out) of w, y float (rows ldy apart) or, with y_bf16,
 * bf16 (rows out apart, no accumulate). -1 when oneDNN fails. */
static int bf16_chunk(void *y, bool y_bf16, int ldy, const uint16_t *xc, const lowp_weight *w, int row0, int c,
                      const float *b, int n, int kc, int out, bool accumulate, int act) {
    dnnl_data_type_t yt = y_bf16 ? dnnl_bf16 : dnnl_f32;
    int tag;
    const void *W = weight_rows(w, row0, out, c, &tag);
    dnnl_primitive_t p =
        W ? matmul_primitive(dnnl_bf16, yt, n, kc, out, kc, w->in, ldy, tag, NULL, b != NULL, accumulate, act, NULL, 0)
          : NULL;
    int rc = p ? matmul_run(p, xc, dnnl_bf16, W, tag, NULL, b, y, yt, n, kc, out, kc, w->in, ldy) : -1;
    if (p) dnnl_primitive_destroy(p);
    return rc;
}

/* y [n, out] (=|+=) act(xb W^T + b) in bf16 x bf16 with fp32 sums, xb
 * chunk-major for w; y is float (rows ldy apart) or, with y_bf16, bf16
 * (rows out apart, no accumulate). Returns -1 only when oneDNN fails at
 * run time. */
static int bf16_matmul(void *y, bool y_bf16, int ldy, const uint16_t *xb, const lowp_weight *w, int row0,
                       const float *b, int n, int in, int out, bool accumulate, int act, float *ws) {
    if (w->emulated) { /* the same bf16 values, multiplied by sgemm (one chunk) */
        float *xe = ws_take(&ws, (size_t)n * in * sizeof(float));
        float *ye = y_bf16 ? ws_take(&ws, (size_t)n * out * sizeof(float)) : y;
#pragma omp parallel for if ((size_t)n * in > 65536)
        for (size_t i = 0; i < (size_t)n * in; i++) xe[i] = bf16_to_f32(xb[i]);
        gemm_rows(ye, y_bf16 ? out : ldy, xe, in, w->emulated + (size_t)row0 * in, b, n, in, out, accumulate);
        rows_activation(ye, y_bf16 ? out : ldy, n, out, act);
        if (y_bf16) bf16_rows(y, ye, out, n, out, out);
        return 0;
    }
    int kc, chunks = weight_chunks(w, &kc);
    if (chunks == 1) return bf16_chunk(y, y_bf16, ldy, xb, w, row0, 0, b, n, in, out, accumulate, act);
    /* the chunks' sums into a float buffer, then into y: y stays untouched
     * if a chunk fails (the caller redoes the GEMM at fp32) */
    float *t = ws_take(&ws, (size_t)n * out * sizeof(float));
    for (int c = 0; c < chunks; c++)
        if (bf16_chunk(t, false, out, xb + (size_t)c * n * kc, w, row0, c, c == 0 ? b : NULL, n, kc, out, c > 0, -1))
            return -1;
    add_rows(y, y_bf16, ldy, t, n, out, accumulate, act);
    return 0;
}

/* x [n, in] (rows ldx apart) quantised row by row (int8 weights are
 * never chunked: see pack_weight). */
static void int8_rows(int8_t *xq, float *xscale, const float *x, int ldx, int n, int in) {
#pragma omp parallel for if ((size_t)n * in > 65536)
    for (int i = 0; i < n; i++) xscale[i] = quantize_row(xq + (size_t)i * in, x + (size_t)i * ldx, in);
}

/* acc [n, out] = xq W^T in int32. Returns -1 only when oneDNN fails at run time. */
static int int8_matmul(int32_t *acc, const int8_t *xq, const lowp_weight *w, int row0, int n, int in, int out,
                       float *ws) {
    if (w->emulated) { /* the int8 values as floats through sgemm: exact products, float sums */
        float *xe = ws_take(&ws, (size_t)n * in * sizeof(float)), *accf = (float *)acc;
        for (size_t i = 0; i < (size_t)n * in; i++) xe[i] = (float)xq[i];
        gemm_rows(accf, out, xe, in, w->emulated + (size_t)row0 * in, NULL, n, in, out, false);
        for (size_t i = 0; i < (size_t)n * out; i++) acc[i] = (int32_t)lrintf(accf[i]); /* in place */
        return 0;
    }
    int tag;
    const void *W = weight_rows(w, row0, out, 0, &tag);
    dnnl_primitive_t p =
        W ? matmul_primitive(dnnl_s8, dnnl_s32, n, in, out, in, in, out, tag, w->packed_desc, false, false, -1, NULL, 0)
          : NULL;
    if (!p && w->packed) { /* a range off the blocks, or a shape oneDNN has no fast kernel for on
                            * packed weights (AMX int8 with fewer than 16 rows here): the plain copy */
        W = w->q + (size_t)row0 * in, tag = 0;
        p = matmul_primitive(dnnl_s8, dnnl_s32, n, in, out, in, in, out, 0, NULL, false, false, -1, NULL, 0);
    }
    int rc = p ? matmul_run(p, xq, dnnl_s8, W, tag, w->packed_desc, NULL, acc, dnnl_s32, n, in, out, in, in, out) : -1;
    if (p) dnnl_primitive_destroy(p);
    return rc;
}

/* One row of int8 sums back to floats: v = acc * (row scale * column
 * scale) + b, then (=|+=) into y and the activation, while the row is in
 * cache. y may alias acc (in place). */
static void dequant_row(float *y, const int32_t *acc, float sx, const float *wscale, const float *b, int out,
                        bool accumulate, int act) {
    if (accumulate && b) {
#pragma omp simd
        for (int j = 0; j < out; j++) y[j] += (float)acc[j] * (sx * wscale[j]) + b[j];
    } else if (accumulate) {
#pragma omp simd
        for (int j = 0; j < out; j++) y[j] += (float)acc[j] * (sx * wscale[j]);
    } else if (b) {
#pragma omp simd
        for (int j = 0; j < out; j++) y[j] = (float)acc[j] * (sx * wscale[j]) + b[j];
    } else {
#pragma omp simd
        for (int j = 0; j < out; j++) y[j] = (float)acc[j] * (sx * wscale[j]);
    }
    if (act >= 0) activation_forward(y, (size_t)out, act);
}

static void dequant_rows(float *y, int ldy, const int32_t *acc, const float *xscale, const float *wscale,
                         const float *b, int n, int out, bool accumulate, int act) {
#pragma omp parallel for if ((size_t)n * out > 65536)
    for (int i = 0; i < n; i++)
        dequant_row(y + (size_t)i * ldy, acc + (size_t)i * out, xscale[i], wscale, b, out, accumulate, act);
}

/* The GEMM at the weight's precision; -1 when oneDNN failed at run time. */
static int lowp_gemm(const clipc_model *m, float *y, int ldy, const float *x, int ldx, const lowp_weight *w, int row0,
                     const float *b, int n, int in, int out, bool accumulate, int act, float *ws) {
    int tag;
    bool bf16 = m->precision == CLIPC_BF16; /* (int8 keeps its plain copy for such cases, see int8_matmul) */
    if (bf16 && (!weight_rows(w, row0, out, 0, &tag) || (w->packed && ldy != out))) {
        /* a row range off the packed blocks (widths that are not multiples
         * of 64), or rows of y further apart than out (oneDNN 2.6 has only
         * its reference loops for a strided output on packed weights): the
         * enclosing blocks into a buffer, then the wanted columns */
        int r0 = row0 / 64 * 64, r1 = (row0 + out + 63) / 64 * 64;
        if (r1 > w->out) r1 = w->out;
        int wide = r1 - r0;
        float *t = ws_take(&ws, (size_t)n * wide * sizeof(float));
        if (lowp_gemm(m, t, wide, x, ldx, w, r0, NULL, n, in, wide, false, -1, ws)) return -1;
#pragma omp parallel for if ((size_t)n * out > 65536)
        for (int i = 0; i < n; i++) {
            float *yi = y + (size_t)i * ldy;
            const float *ti = t + (size_t)i * wide + (row0 - r0);
            for (int j = 0; j < out; j++) yi[j] = (accumulate ? yi[j] : 0.0f) + ti[j] + (b ? b[j] : 0.0f);
        }
        rows_activation(y, ldy, n, out, act);
        return 0;
    }
    if (m->precision == CLIPC_BF16) {
        int kc;
        weight_chunks(w, &kc);
        uint16_t *xb = ws_take(&ws, (size_t)n * in * 2);
        bf16_rows(xb, x, ldx, n, in, kc);
        return bf16_matmul(y, false, ldy, xb, w, row0, b, n, in, out, accumulate, act, ws);
    }
    int8_t *xq = ws_take(&ws, (size_t)n * in);
    float *xscale = ws_take(&ws, (size_t)n * sizeof(float));
    int32_t *acc = ws_take(&ws, (size_t)n * out * sizeof(int32_t));
    int8_rows(xq, xscale, x, ldx, n, in);
    if (int8_matmul(acc, xq, w, row0, n, in, out, ws)) return -1;
    dequant_rows(y, ldy, acc, xscale, w->scale + row0, b, n, out, accumulate, act);
    return 0;
}

/* Reduced-precision GEMMs that found no kernel and ran at fp32 instead
 * (correct, but not the precision asked for): tests check it stays 0. */
static atomic_long fp32_fallbacks;

long model_lowp_fallbacks(void) { return atomic_load(&fp32_fallbacks); }

/* The converted weight for the matrix at w_off with in columns and out
 * rows from *row0, or NULL (fp32, or no converted copy). */
static const lowp_weight *weight_for(const clipc_model *m, size_t w_off, int n, int in, int out, int *row0) {
    if (m->precision == CLIPC_FP32 || n <= 0) return NULL;
    const lowp_weight *w = find_weight(m, w_off, row0);
    return w && w->in == in && *row0 + out <= w->out ? w : NULL;
}

void model_gemm(const clipc_model *m, float *y, int ldy, const float *x, int ldx, size_t w_off, const float *b, int n,
                int in, int out, bool accumulate, int act, float *ws) {
    int row0 = 0;
    const lowp_weight *w = weight_for(m, w_off, n, in, out, &row0);
    if (w && lowp_gemm(m, y, ldy, x, ldx, w, row0, b, n, in, out, accumulate, act, ws) == 0) return;
    if (w) atomic_fetch_add(&fp32_fallbacks, 1);
    /* fp32 (and the fp32 answer if oneDNN failed at run time) */
    gemm_rows(y, ldy, x, ldx, m->params + w_off, b, n, in, out, accumulate);
    rows_activation(y, ldy, n, out, act);
}

/* The MLP with its hidden layer kept at the GEMMs' precision: bf16 c_fc
 * writes bf16 (bias and activation fused) that c_proj reads; int8 c_fc's
 * sums are dequantised, activated and requantised row by row in cache.
 * Either way the [n, H] hidden layer is never written as floats. */
void model_mlp(const clipc_model *m, float *x, const float *ln, size_t fc_w, const float *fc_b, size_t proj_w,
               const float *proj_b, int n, int D, int H, int act, float *hid, float *ws) {
    int r0 = 0, r1 = 0;
    const lowp_weight *fc = weight_for(m, fc_w, n, D, H, &r0), *proj = weight_for(m, proj_w, n, H, D, &r1);
    if (fc && proj && r0 == 0 && r1 == 0) {
        float *w0 = ws;
        int kd, kh, chunks;
        weight_chunks(fc, &kd), chunks = weight_chunks(proj, &kh);
        if (m->precision == CLIPC_BF16 && chunks > 1 && n >= 64) {
            /* c_proj reads the hidden layer in chunks of kh: c_fc writes one
             * chunk (its rows [c kh, (c + 1) kh)), c_proj adds it into t while
             * it is in cache; x is touched only when every chunk has run */
            uint16_t *xb = ws_take(&ws, (size_t)n * D * 2), *hb = ws_take(&ws, (size_t)n * kh * 2);
            float *t = ws_take(&ws, (size_t)n * D * sizeof(float));
            bf16_rows(xb, ln, D, n, D, kd);
            int rc = 0;
            for (int c = 0; c < chunks && rc == 0; c++)
                rc = bf16_matmul(hb, true, kh, xb, fc, c * kh, fc_b + (size_t)c * kh, n, D, kh, false, act, ws) ||
                     bf16_chunk(t, false, D, hb, proj, 0, c, c == 0 ? proj_b : NULL, n, kh, D, c > 0, -1);
            if (rc == 0) {
                add_rows(x, false, D, t, n, D, true, -1);
                return;
            }
        } else if (m->precision == CLIPC_BF16) {
            /* one c_fc GEMM (for a few rows, a caption or two, chunking c_fc
             * as well cost a GEMM call per chunk: ViT-B-32 texts at batch 1
             * ran about 10% slower), its output rearranged into c_proj's
             * chunks if it has them */
            uint16_t *xb = ws_take(&ws, (size_t)n * D * 2), *hb = ws_take(&ws, (size_t)n * H * 2);
            uint16_t *hc = chunks > 1 ? ws_take(&ws, (size_t)n * H * 2) : hb;
            bf16_rows(xb, ln, D, n, D, kd);
            int rc = bf16_matmul(hb, true, H, xb, fc, 0, fc_b, n, D, H, false, act, ws);
            for (int i = 0; rc == 0 && hc != hb && i < n; i++)
                for (int j = 0; j < H; j += kh)
                    memcpy(hc + chunked_at(i, j, n, kh), hb + (size_t)i * H + j, (size_t)kh * 2);
            if (rc == 0 && bf16_matmul(x, false, D, hc, proj, 0, proj_b, n, H, D, true, -1, ws) == 0) return;
        } else {
            int8_t *xq = ws_take(&ws, (size_t)n * D), *hq = ws_take(&ws, (size_t)n * H);
            float *xscale = ws_take(&ws, (size_t)n * sizeof(float)), *hscale = ws_take(&ws, (size_t)n * sizeof(float));
            /* c_fc's sums [n, H], then c_proj's [n, D] */
            int32_t *acc = ws_take(&ws, (size_t)n * (H > D ? H : D) * sizeof(int32_t));
            int8_rows(xq, xscale, ln, D, n, D);
            if (int8_matmul(acc, xq, fc, 0, n, D, H, ws) == 0) {
#pragma omp parallel
                {
                    /* one row at a time through a buffer that stays in L1/L2:
                     * the sums are read once and only the int8 row is written */
                    float *row = malloc((size_t)H * sizeof *row);
#pragma omp for
                    for (int i = 0; i < n; i++) {
                        float *dst = row ? row : (float *)(acc + (size_t)i * H); /* (in place without memory) */
                        dequant_row(dst, acc + (size_t)i * H, xscale[i], fc->scale, fc_b, H, false, act);
                        hscale[i] = quantize_row(hq + (size_t)i * H, dst, H);
                    }
                    free(row);
                }
                if (int8_matmul(acc, hq, proj, 0, n, H, D, ws) == 0) {
                    dequant_rows(x, D, acc, hscale, proj->scale, proj_b, n, D, true, -1);
                    return;
                }
            }
        }
        ws = w0; /* oneDNN failed at run time: x is untouched until the last GEMM; redo in fp32 */
        atomic_fetch_add(&fp32_fallbacks, 1);
    }
    model_gemm(m, hid, H, ln, D, fc_w, fc_b, n, D, H, false, act, ws);
    model_gemm(m, x, D, hid, H, proj_w, proj_b, n, H, D, true, -1, ws);
}

/* ---- what runs ------------------------------------------------------------------------------ */

extern char *openblas_get_corename(void);

const char *clipc_precision_kernel(int precision, char *buf, size_t cap) {
    if (precision == CLIPC_FP32) {
        snprintf(buf, cap, "OpenBLAS sgemm (%s)", openblas_get_corename());
        return buf;
    }
    const dnnl_version_t *v = dnnl_version();
    char why[192];
    if (precision_native_why(precision, why, sizeof why))
        snprintf(buf, cap, "oneDNN %d.%d.%d %s", v->major, v->minor, v->patch, why);
    else
        snprintf(buf, cap, "emulated on OpenBLAS sgemm (%s); oneDNN %d.%d.%d: %s", openblas_get_corename(), v->major,
                 v->minor, v->patch, why);
    return buf;
}
