/* bench.c — `make bench`: throughput of a random-init ViT-B-32 on this
 * machine, as images/s and texts/s, achieved GFLOP/s, and that as a share
 * of the machine's measured FMA peak (an AVX2 FMA loop on every core).
 * Prints which OpenBLAS kernel ran. Timings take the best of several runs
 * after a warm-up. */
#include "../src/internal.h"
#include "../src/train/train.h"
#include "../src/index/index.h"
#include "../src/finetune/finetune.h"

#include <cblas.h>
#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>

char *openblas_get_config(void);
char *openblas_get_corename(void);
int openblas_get_num_threads(void);

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Peak: 10 independent FMA chains per core (enough to cover the FMA
 * latency on two ports), all cores at once, at the widest vectors the CPU
 * has (AVX-512 or AVX2: OpenBLAS uses AVX-512 where it exists). The best
 * of 10 short samples: on a shared VM a single sample can land in a
 * neighbour's burst. Returns GFLOP/s. */
#define FMA_LOOP(VEC, SET1, FMADD, ADD, STORE, LANES)                                  \
    const long iters = 20000000;                                                       \
    double best = 0;                                                                   \
    for (int rep = 0; rep < 10; rep++) {                                               \
        double t0 = now();                                                             \
        float sink = 0;                                                                \
        _Pragma("omp parallel reduction(+ : sink)") {                                  \
            VEC a[10], b = SET1(0.999999f), c = SET1(1e-7f);                            \
            for (int k = 0; k < 10; k++) a[k] = SET1((float)k);                         \
            for (long i = 0; i < iters; i++)                                           \
                for (int k = 0; k < 10; k++) a[k] = FMADD(a[k], b, c);                  \
            VEC s = a[0];                                                              \
            for (int k = 1; k < 10; k++) s = ADD(s, a[k]);                              \
            float out[LANES];                                                          \
            STORE(out, s);                                                             \
            sink += out[0];                                                            \
        }                                                                              \
        double dt = now() - t0;                                                        \
        double flops = (double)omp_get_max_threads() * iters * 10 * LANES * 2;         \
        if (flops / dt > best) best = flops / dt;                                      \
        if (sink == 12345.0f) printf(" ");                                             \
    }                                                                                  \
    return best / 1e9;

__attribute__((target("avx2,fma"))) static double fma_peak_avx2(void) {
    FMA_LOOP(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, _mm256_storeu_ps, 8)
}

__attribute__((target("avx512f"))) static double fma_peak_avx512(void) {
    FMA_LOOP(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, _mm512_storeu_ps, 16)
}

static const char *fma_isa(void) { return __builtin_cpu_supports("avx512f") ? "AVX-512" : "AVX2"; }

static double fma_peak(void) { return __builtin_cpu_supports("avx512f") ? fma_peak_avx512() : fma_peak_avx2(); }

/* FLOPs (2 per multiply-add) of the work the encoders actually do: every
 * block in full except the last, which runs keys/values for all rows and
 * query, out_proj and MLP for the pooled row only. */
static double vit_flops(const clipc_config *c) {
    double G = c->image_resolution / c->vision_patch_size, S = G * G + 1, D = c->vision_width;
    double patch = G * G * 3.0 * c->vision_patch_size * c->vision_patch_size * D;
    double block = S * 12 * D * D + 2 * S * S * D;
    double last = S * 2 * D * D + 10 * D * D + 2 * S * D;
    return 2 * (patch + (c->vision_layers - 1) * block + last + D * c->embed_dim);
}

static double text_flops(const clipc_config *c, const int *lens, int n) {
    double D = c->text_width, total = 0;
    for (int i = 0; i < n; i++) {
        double l = lens[i];
        double block = l * 12 * D * D + l * (l + 1) * D; /* causal: l(l+1)/2 scores, twice */
        double last = l * 2 * D * D + 10 * D * D + 2 * l * D;
        total += (c->text_layers - 1) * block + last + D * c->embed_dim;
    }
    return 2 * total;
}

/* SigLIP: no class token, every block full (the MAP head pools every
 * token), then the head (keys and values of every token, one query, an MLP
 * on one row); texts run all ctx positions bidirectionally, the last block
 * pruned to the last position. */
static double siglip_image_flops(const clipc_config *c) {
    double S = (double)(c->image_resolution / c->vision_patch_size) * (c->image_resolution / c->vision_patch_size);
    double D = c->vision_width, H = c->vision_mlp_width, P = c->vision_patch_size;
    double block = S * (4 * D * D + 2 * D * H) + 2 * S * S * D;
    double head = S * 2 * D * D + 2 * D * D + 2 * D * H + 2 * S * D;
    return 2 * (S * 3 * P * P * D + c->vision_layers * block + head);
}

static double siglip_text_flops(const clipc_config *c) {
    double l = c->context_length, D = c->text_width, H = c->text_mlp_width;
    double block = l * (4 * D * D + 2 * D * H) + 2 * l * l * D;
    double last = l * 2 * D * D + 2 * D * D + 2 * D * H + 2 * l * D;
    return 2 * ((c->text_layers - 1) * block + last + D * c->embed_dim);
}

/* CoCa captions at batch 1 and 16: the shipped captioner (its trained weights: real caption
 * lengths) and a random-init coca_ViT-B-32 (OpenCLIP's shape; random weights run captions to
 * their full 30 tokens); greedy, and for the shipped model beam search too. */
static void bench_caption(void) {
    static const char *const archs[] = {"models/clipc-fmnist-coca.safetensors", "coca_ViT-B-32"};
    clipc_error err;
    printf("\ncaptions (CoCa; KV-cached decoding: one image pass, then one token step per token)\n");
    for (size_t a = 0; a < sizeof archs / sizeof *archs; a++) {
        clipc_model *m = a == 0 ? clipc_model_load(archs[a], &err) : clipc_model_init(archs[a], 2, &err);
        if (!m) {
            printf("  %s: %s\n", archs[a], err.message);
            continue;
        }
        const clipc_config *c = clipc_model_config(m);
        int R = c->image_resolution, n = 16;
        float *px = malloc((size_t)n * 3 * R * R * sizeof *px);
        rng r;
        rng_seed(&r, 3);
        for (size_t i = 0; i < (size_t)n * 3 * R * R; i++) px[i] = (float)rng_normal(&r);
        for (int mode = 0; mode < 3; mode++) {
            if (mode == 2 && a > 0) break;
            int b = mode == 0 ? 1 : 16;
            clipc_caption_options o;
            clipc_caption_defaults(&o);
            if (mode < 2) o.beams = 1, o.top_k = 1;
            int32_t *ids[16];
            int lens[16];
            double best = 1e30;
            long tokens = 0;
            for (int rep = 0; rep < 3; rep++) {
                double t0 = now();
                if (clipc_caption(m, px, b, &o, ids, lens, &err)) {
                    printf("  %s: %s\n", archs[a], err.message);
                    break;
                }
                double dt = now() - t0;
                tokens = 0;
                for (int i = 0; i < b; i++) tokens += lens[i] - 1, free(ids[i]);
                best = dt < best ? dt : best;
            }
            printf("  %-22s %-20s batch %2d: %7.1f captions/s, %8.0f tokens/s (%.1f tokens each)\n",
                   a == 0 ? "shipped coca-fmnist" : "coca_ViT-B-32 (random)", mode == 2 ? "beam search (6 in 3)" : "greedy",
                   b, b / best, tokens / best, (double)tokens / b);
        }
        free(px);
        clipc_model_free(m);
    }
}

static void cosines(const float *a, const float *b, int n, int dim, double *min, double *mean);

/* SigLIP's B/16 at 224: images and texts per second at each precision. */
static void bench_siglip(const double *lowp_peak) {
    clipc_error err;
    clipc_model *m = clipc_model_init("ViT-B-16-SigLIP", 5, &err);
    if (!m) {
        printf("SigLIP: %s\n", err.message);
        return;
    }
    const clipc_config *c = clipc_model_config(m);
    int R = c->image_resolution, E = c->embed_dim, ctx = c->context_length, NI = 32, NT = 64;
    printf("\nSigLIP ViT-B-16 (%zu parameters; %d patches, MAP head; texts: all %d positions, bidirectional)\n",
           clipc_model_param_count(m), (R / c->vision_patch_size) * (R / c->vision_patch_size), ctx);
    float *pixels = malloc((size_t)NI * 3 * R * R * sizeof *pixels), *out = malloc((size_t)NT * E * sizeof *out);
    float *ref_i = malloc((size_t)NI * E * sizeof *ref_i), *ref_t = malloc((size_t)NT * E * sizeof *ref_t);
    int32_t *tokens = malloc((size_t)NT * ctx * sizeof *tokens);
    rng r;
    rng_seed(&r, 11);
    for (size_t i = 0; i < (size_t)NI * 3 * R * R; i++) pixels[i] = (float)rng_normal(&r);
    for (size_t i = 0; i < (size_t)NT * ctx; i++) tokens[i] = (int32_t)(rng_next(&r) % (uint64_t)c->vocab_size);
    for (int prec = CLIPC_FP32; prec <= CLIPC_INT8; prec++) {
        char kernel[256];
        if (clipc_model_set_precision(m, prec, &err)) {
            printf("  %s: %s\n", clipc_precision_name(prec), err.message);
            continue;
        }
        for (int kind = 0; kind < 2; kind++) {
            int n = kind ? NT : NI;
            double best = 1e30;
            for (int rep = 0; rep < 4; rep++) { /* the first is a warm-up */
                double t0 = now();
                if (kind) clipc_encode_text(m, tokens, n, out, &err);
                else clipc_encode_image(m, pixels, n, out, &err);
                double dt = now() - t0;
                if (rep > 0 && dt < best) best = dt;
            }
            float *ref = kind ? ref_t : ref_i;
            double cmin = 1, cmean = 1;
            if (prec == CLIPC_FP32) memcpy(ref, out, (size_t)n * E * sizeof *ref);
            else cosines(out, ref, n, E, &cmin, &cmean);
            double gflops = (kind ? siglip_text_flops(c) : siglip_image_flops(c)) * n / best / 1e9;
            printf("  %s %-5s batch %2d: %7.1f %s/s  %6.1f G%s/s  %4.0f%% of peak  cosine vs fp32 min %.6f  (%s)\n",
                   kind ? "encode_text " : "encode_image", clipc_precision_name(prec), n, n / best,
                   kind ? "texts " : "images", gflops, prec == CLIPC_FP32 ? "FLOP" : "OP", 100 * gflops / lowp_peak[prec],
                   cmin, clipc_precision_kernel(prec, kernel, sizeof kernel));
        }
    }
    free(pixels), free(out), free(ref_i), free(ref_t), free(tokens);
    clipc_model_free(m);
}

static const char *CAPTIONS[] = {
    "a photo of a dog.", "a black and white photo of a cat sitting on a chair.",
    "a red sports car parked on the street.", "two people walking on the beach at sunset.",
    "a bowl of fresh fruit on a wooden table.", "a close-up photo of a sneaker.",
    "an aerial view of a city at night.", "a plate of pasta with tomato sauce and basil.",
    "a sketch of a mountain landscape.", "a child playing with a red ball in the park.",
    "a photo of a t-shirt.", "a vintage camera on a shelf.",
    "a bird flying over the ocean.", "a stack of books next to a cup of coffee.",
    "a man riding a bicycle down a hill.", "a blurry photo of a train.",
};

/* The ceiling the GEMMs set: a ViT-B-32 block's four linear layers
 * (in_proj, out_proj, c_fc, c_proj) at batch 32 through the same
 * linear_forward the model uses, best of 5. Nearly all of an image's FLOPs
 * are in these products, so even with everything else free the encoder
 * could not beat FLOPs per image / this rate. */
static void gemm_ceiling(const clipc_config *c, int batch, double peak) {
    int D = c->vision_width, G = c->image_resolution / c->vision_patch_size, T = batch * (G * G + 1);
    float *x = malloc((size_t)T * 4 * D * sizeof *x), *y = malloc((size_t)T * 4 * D * sizeof *y);
    float *W = malloc((size_t)4 * D * D * sizeof *W), *b = calloc((size_t)4 * D, sizeof *b);
    if (!x || !y || !W || !b) {
        free(x), free(y), free(W), free(b);
        return;
    }
    for (size_t i = 0; i < (size_t)T * 4 * D; i++) x[i] = (float)(i % 13) * 0.01f;
    for (size_t i = 0; i < (size_t)4 * D * D; i++) W[i] = (float)(i % 7) * 0.01f;
    const int shapes[4][2] = {{D, 3 * D}, {D, D}, {D, 4 * D}, {4 * D, D}}; /* in, out */
    double best = 1e30, flops = 0;
    for (int s = 0; s < 4; s++) flops += 2.0 * T * shapes[s][0] * shapes[s][1];
    for (int rep = 0; rep < 6; rep++) {
        double t0 = now();
        for (int s = 0; s < 4; s++) linear_forward(y, x, W, b, T, shapes[s][0], shapes[s][1], false);
        double dt = now() - t0;
        if (rep > 0 && dt < best) best = dt;
    }
    double rate = flops / best / 1e9;
    printf("  GEMM ceiling: one block's 4 linear layers at batch %d (%d x %d..%d): %.1f GFLOP/s, %.0f%% of peak;\n"
           "  at that rate, with all other work free: at most %.1f images/s\n",
           batch, T, D, 4 * D, rate, 100 * rate / peak, rate * 1e9 / vit_flops(c));
    free(x), free(y), free(W), free(b);
}

/* The reduced-precision ceiling: oneDNN's matmul at 4096 x 4096 x 4096
 * (bf16 -> f32, or s8 x s8 -> s32), best of 5, in G(FL)OP/s. */
static double onednn_peak(int precision) {
    dnnl_engine_t eng;
    dnnl_stream_t st;
    if (dnnl_engine_create(&eng, dnnl_cpu, 0)) return 0;
    dnnl_stream_create(&st, eng, dnnl_stream_default_flags);
    bool bf16 = precision == CLIPC_BF16;
    dnnl_data_type_t in = bf16 ? dnnl_bf16 : dnnl_s8, outt = bf16 ? dnnl_f32 : dnnl_s32;
    const dnnl_dim_t N = 4096;
    dnnl_memory_desc_t a, b, c;
    dnnl_memory_desc_init_by_tag(&a, 2, (dnnl_dims_t){N, N}, in, dnnl_ab);
    dnnl_memory_desc_init_by_tag(&b, 2, (dnnl_dims_t){N, N}, in, dnnl_ba);
    dnnl_memory_desc_init_by_tag(&c, 2, (dnnl_dims_t){N, N}, outt, dnnl_ab);
    dnnl_matmul_desc_t md;
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t p;
    double best = 0;
    if (dnnl_matmul_desc_init(&md, &a, &b, NULL, &c) == 0 && dnnl_primitive_desc_create(&pd, &md, NULL, eng, NULL) == 0) {
        dnnl_primitive_create(&p, pd);
        void *A = calloc((size_t)N * N, 4), *B = calloc((size_t)N * N, 4), *C = calloc((size_t)N * N, 4);
        memset(A, 0x11, (size_t)N * N), memset(B, 0x22, (size_t)N * N);
        dnnl_memory_t ma, mb, mc;
        dnnl_memory_create(&ma, &a, eng, A), dnnl_memory_create(&mb, &b, eng, B), dnnl_memory_create(&mc, &c, eng, C);
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
        for (int rep = 0; rep < 6; rep++) {
            double t0 = now();
            dnnl_primitive_execute(p, st, 3, args);
            dnnl_stream_wait(st);
            double rate = 2.0 * N * N * N / (now() - t0) / 1e9;
            if (rep > 0 && rate > best) best = rate;
        }
        dnnl_memory_destroy(ma), dnnl_memory_destroy(mb), dnnl_memory_destroy(mc);
        free(A), free(B), free(C);
        dnnl_primitive_destroy(p);
        dnnl_primitive_desc_destroy(pd);
    }
    dnnl_stream_destroy(st);
    dnnl_engine_destroy(eng);
    return best;
}

/* min and mean cosine of n rows of a against b. */
static void cosines(const float *a, const float *b, int n, int dim, double *min, double *mean) {
    *min = 1, *mean = 0;
    for (int i = 0; i < n; i++) {
        double ab = 0, aa = 0, bb = 0;
        for (int j = 0; j < dim; j++) {
            ab += (double)a[(size_t)i * dim + j] * b[(size_t)i * dim + j];
            aa += (double)a[(size_t)i * dim + j] * a[(size_t)i * dim + j];
            bb += (double)b[(size_t)i * dim + j] * b[(size_t)i * dim + j];
        }
        double cs = ab / sqrt(aa * bb + 1e-30);
        *min = cs < *min ? cs : *min;
        *mean += cs / n;
    }
}

/* Images at batch 1 and 32 at the model's current precision; ref holds
 * the fp32 features (filled when prec is fp32) for the cosine column. */
static double bench_images(clipc_model *m, int prec, const float *pixels, float *out, float *ref, double peak) {
    const clipc_config *c = clipc_model_config(m);
    clipc_error err;
    int batches[] = {1, 32};
    for (int bi = 0; bi < 2; bi++) {
        int b = batches[bi];
        clipc_encode_image(m, pixels, b, out, &err); /* warm-up */
        double best = 1e30;
        int reps = b == 1 ? 20 : 5;
        for (int rep = 0; rep < reps; rep++) {
            double t0 = now();
            clipc_encode_image(m, pixels, b, out, &err);
            double dt = now() - t0;
            best = dt < best ? dt : best;
        }
        double gflops = vit_flops(c) * b / best / 1e9, cmin = 1, cmean = 1;
        if (b == 32 && prec == CLIPC_FP32) memcpy(ref, out, (size_t)32 * c->embed_dim * sizeof *ref);
        if (b == 32) cosines(out, ref, 32, c->embed_dim, &cmin, &cmean);
        printf("encode_image  batch %2d: %7.1f images/s  %6.1f GFLOP/s  %4.0f%% of peak", b, b / best, gflops,
               100 * gflops / peak);
        if (b == 32) printf("  cosine vs fp32 min %.6f mean %.6f", cmin, cmean);
        printf("\n");
        if (b == 32) return best;
    }
    return 0;
}

static void bench_texts(clipc_model *m, int prec, const int32_t *tokens, const int *lens, float *out, float *ref,
                        double peak) {
    const clipc_config *c = clipc_model_config(m);
    clipc_error err;
    int batches[] = {1, 64};
    for (int bi = 0; bi < 2; bi++) {
        int b = batches[bi];
        clipc_encode_text(m, tokens, b, out, &err);
        double best = 1e30;
        int reps = b == 1 ? 100 : 10;
        for (int rep = 0; rep < reps; rep++) {
            double t0 = now();
            clipc_encode_text(m, tokens, b, out, &err);
            double dt = now() - t0;
            best = dt < best ? dt : best;
        }
        double gflops = text_flops(c, lens, b) / best / 1e9, cmin = 1, cmean = 1;
        if (b == 64 && prec == CLIPC_FP32) memcpy(ref, out, (size_t)64 * c->embed_dim * sizeof *ref);
        if (b == 64) cosines(out, ref, 64, c->embed_dim, &cmin, &cmean);
        printf("encode_text   batch %2d: %7.1f texts/s   %6.1f GFLOP/s  %4.0f%% of peak", b, b / best, gflops,
               100 * gflops / peak);
        if (b == 64) printf("  cosine vs fp32 min %.6f mean %.6f", cmin, cmean);
        printf("\n");
    }
}

/* Where an image pass spends its time, at the model's precision: one
 * share of the batch-32 pass (16 images on one thread, as the encoder
 * runs each of its two shares) timed whole, then the same kernels on the
 * same shapes timed alone on that thread (11 full blocks; the last one is
 * pruned to the class token). The rest — patch unrolling and embedding,
 * the pruned last block, copies — is the difference. */
static void time_split(clipc_model *m, const float *pixels, float *out) {
    const clipc_config *c = clipc_model_config(m);
    int D = c->vision_width, H = c->vision_heads, S = (c->image_resolution / c->vision_patch_size);
    S = S * S + 1;
    enum { PER = 16 };
    int T = PER * S, saved = omp_get_max_threads();
    clipc_error err;
    omp_set_num_threads(1);
    double pass = 1e30, best[3] = {1e30, 1e30, 1e30}; /* linear layers, attention, LayerNorm */
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        clipc_encode_image(m, pixels, PER, out, &err);
        double dt = now() - t0;
        if (rep > 0 && dt < pass) pass = dt;
    }
    float *b[6];
    size_t sizes[6] = {(size_t)T * D, (size_t)T * D, (size_t)T * 3 * D, (size_t)T * D, (size_t)T * 4 * D,
                       lowp_scratch(T, 4 * D, 4 * D) + attention_scratch(S, D / H)};
    for (int k = 0; k < 6; k++) {
        b[k] = malloc(sizes[k] * sizeof(float));
        for (size_t i = 0; i < sizes[k]; i++) b[k][i] = (float)((i * 7919) % 101) * 0.01f - 0.5f;
    }
    float *x = b[0], *ln = b[1], *qkv = b[2], *att = b[3], *hid = b[4], *ws = b[5];
    int start[PER], len[PER];
    for (int i = 0; i < PER; i++) start[i] = i * S, len[i] = S;
    const float *P = m->params;
    for (int part = 0; part < 3; part++)
        for (int rep = 0; rep < 3; rep++) {
            double t0 = now();
            for (int l = 0; l < c->vision_layers - 1; l++) {
                const block_offsets *bo = &m->L.v_blocks[l];
                if (part == 0) {
                    model_gemm(m, qkv, 3 * D, ln, D, bo->qkv_w, P + bo->qkv_b, T, D, 3 * D, false, -1, ws);
                    model_gemm(m, x, D, att, D, bo->out_w, P + bo->out_b, T, D, D, true, -1, ws);
                    model_mlp(m, x, ln, bo->fc_w, P + bo->fc_b, bo->proj_w, P + bo->proj_b, T, D, 4 * D, c->vision_activation,
                              hid, ws);
                } else if (part == 1) {
                    attention_forward(att, qkv, start, len, NULL, PER, D, H, false, m->precision != CLIPC_FP32, ws, NULL, NULL,
                                      NULL);
                } else {
                    layernorm_forward(ln, x, P + bo->ln1_w, P + bo->ln1_b, T, D, c->vision_ln_eps);
                    layernorm_forward(ln, x, P + bo->ln2_w, P + bo->ln2_b, T, D, c->vision_ln_eps);
                }
            }
            double dt = now() - t0;
            if (rep > 0 && dt < best[part]) best[part] = dt;
        }
    omp_set_num_threads(saved);
    double rest = pass - best[0] - best[1] - best[2];
    printf("  time split, 16 images on one thread (%.1f ms): linear layers %.0f%%, attention %.0f%%, LayerNorm %.0f%%, ",
           1e3 * pass, 100 * best[0] / pass, 100 * best[1] / pass, 100 * best[2] / pass);
    if (rest >= 0)
        printf("the rest %.0f%%\n", 100 * rest / pass);
    else /* kernels timed alone lose the warm caches of the pass */
        printf("(timed alone they add up to %.0f%% of the pass: upper bounds)\n", 100 * (pass - rest) / pass);
    for (int k = 0; k < 6; k++) free(b[k]);
}

/* A competing process: a busy loop pinned to the last CPU, for the
 * shared-machine measurements. Returns its pid (0 if none could start). */
static pid_t start_spinner(void) {
    pid_t pid = fork();
    if (pid == 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(sysconf(_SC_NPROCESSORS_ONLN) - 1, &set);
        sched_setaffinity(0, sizeof set, &set);
        for (volatile unsigned long i = 0;; i++) {}
    }
    return pid > 0 ? pid : 0;
}

/* Images/s at batch 1 and 32 with another process holding one CPU, with
 * every thread and with one (the graceful-degradation check). */
static void bench_contention(clipc_model *m, const float *pixels, float *out) {
    clipc_error err;
    int saved = omp_get_max_threads();
    printf("\nshared machine: a busy process pinned to CPU %ld, images/s of the encoder\n",
           sysconf(_SC_NPROCESSORS_ONLN) - 1);
    pid_t spinner = start_spinner();
    if (!spinner) return;
    usleep(200000);
    for (int prec = CLIPC_FP32; prec <= CLIPC_INT8; prec++) {
        clipc_model_set_precision(m, prec, &err);
        double rate[2][2];
        for (int t = 0; t < 2; t++) {
            omp_set_num_threads(t == 0 ? saved : 1);
            for (int bi = 0; bi < 2; bi++) {
                int b = bi ? 32 : 1, reps = bi ? 3 : 10;
                clipc_encode_image(m, pixels, b, out, &err);
                double t0 = now();
                for (int r = 0; r < reps; r++) clipc_encode_image(m, pixels, b, out, &err);
                rate[t][bi] = b * reps / (now() - t0);
            }
        }
        omp_set_num_threads(saved);
        printf("  %s: batch 1 %6.1f (1 thread %6.1f), batch 32 %6.1f (1 thread %6.1f)\n", clipc_precision_name(prec),
               rate[0][0], rate[1][0], rate[0][1], rate[1][1]);
    }
    kill(spinner, SIGKILL);
    waitpid(spinner, NULL, 0);
    clipc_model_set_precision(m, CLIPC_FP32, &err);
}

/* Training throughput: whole optimisation steps (forward with activations,
 * InfoNCE, backward, clipping, AdamW) on random images and real captions. */
static void bench_train(const char *arch, int batch, int steps, clipc_tokenizer *tok, double peak) {
    clipc_error err;
    clipc_model *m = clipc_model_init(arch, 3, &err);
    if (!m) {
        printf("train %s: %s\n", arch, err.message);
        return;
    }
    const clipc_config *c = clipc_model_config(m);
    int R = c->image_resolution, ctx = c->context_length;
    float *pixels = malloc((size_t)batch * 3 * R * R * sizeof *pixels);
    int32_t *tokens = malloc((size_t)batch * ctx * sizeof *tokens);
    rng r;
    rng_seed(&r, 11);
    for (size_t i = 0; i < (size_t)batch * 3 * R * R; i++) pixels[i] = (float)rng_normal(&r);
    int total = 0;
    for (int i = 0; i < batch; i++) {
        clipc_tokenize(tok, CAPTIONS[i % 16], ctx, 1, tokens + (size_t)i * ctx, &err);
        int len = 0;
        while (tokens[(size_t)i * ctx + len] != CLIPC_EOT) len++;
        total += len + 1;
    }
    train_options o = {.batch = batch, .accum = 1, .lr = 1e-4f, .beta1 = 0.9f, .beta2 = 0.98f, .eps = 1e-6f,
                       .weight_decay = 0.2f, .grad_clip = 1.0f, .warmup = 1, .total_steps = 1000};
    trainer t;
    if (trainer_init(&t, m, &o, NULL, &err)) {
        printf("train %s: %s\n", arch, err.message);
        clipc_model_free(m);
        return;
    }
    step_stats st;
    trainer_step(&t, pixels, tokens, &st, &err); /* warm-up */
    double best = 1e30;
    for (int i = 0; i < steps; i++) {
        double t0 = now();
        if (trainer_step(&t, pixels, tokens, &st, &err)) {
            printf("train %s: %s\n", arch, err.message);
            break;
        }
        double dt = now() - t0;
        best = dt < best ? dt : best;
    }
    /* forward + backward = 3x the forward FLOPs (no pruned last block in training) */
    double G = R / c->vision_patch_size, S = G * G + 1, D = c->vision_width, Dt = c->text_width;
    double fwd = batch * 2 * (G * G * 3.0 * c->vision_patch_size * c->vision_patch_size * D +
                              c->vision_layers * (S * 12 * D * D + 2 * S * S * D)) +
                 2 * total * c->text_layers * 12 * Dt * Dt;
    double gflops = 3 * fwd / best / 1e9;
    printf("train %-8s batch %3d: %7.1f pairs/s  %6.1f GFLOP/s  %4.0f%% of peak  (%zu parameters)\n", arch, batch,
           batch / best, gflops, 100 * gflops / peak, clipc_model_param_count(m));
    trainer_free(&t);
    clipc_model_free(m);
    free(pixels);
    free(tokens);
}

/* ---- fine-tuning ------------------------------------------------------------------------ */

typedef struct step_clock {
    double *at;
    int n;
} step_clock;

static void clock_step(void *ctx, long step, long total, float loss, float acc, float lr) {
    (void)step, (void)total, (void)loss, (void)acc, (void)lr;
    step_clock *c = ctx;
    c->at[c->n++] = now();
}

/* Steps of LoRA and CoOp on m at batch 32 (40 Fashion-MNIST images, 4 per class, at the model's
 * resolution): images/s per step from the fastest step after the first, and the GFLOP/s of the
 * work a step does (LoRA: the image tower forward and its dx-only backward, about 2x the forward,
 * and the text tower the same over the 10 class prompts; CoOp: the text tower only). */
static void bench_finetune(clipc_model *m, clipc_tokenizer *tok, double peak) {
    clipc_error err;
    image_set set;
    if (image_set_open("fashion-mnist", "train", "filepath", "label", &set, &err)) {
        printf("finetune: skipped (%s)\n", err.message);
        return;
    }
    int *rows = NULL, n = 0;
    if (few_shot_rows(&set, 4, 0, &rows, &n, &err)) {
        printf("finetune: %s\n", err.message);
        image_set_free(&set);
        return;
    }
    const clipc_config *c = clipc_model_config(m);
    static const char *const simple[] = {"a photo of a {}."};
    int lens[10], ctx = c->context_length;
    int32_t *tokens = malloc((size_t)ctx * sizeof *tokens);
    for (int k = 0; k < 10; k++) { /* the class prompts' lengths (CoOp's are the same: 4 context tokens) */
        char *text = template_fill(simple[0], set.class_names[k]);
        clipc_tokenize(tok, text, ctx, 1, tokens, &err);
        for (lens[k] = 0; tokens[lens[k]] != CLIPC_EOT; lens[k]++) {}
        lens[k]++;
        free(text);
    }
    free(tokens);
    static const int methods[] = {FT_LORA, FT_COOP};
    for (int mi = 0; mi < 2; mi++) {
        int method = methods[mi];
        finetune_options o = {.method = method, .steps = 5, .batch = 32, .lr = 1e-4f, .towers = FT_IMAGE | FT_TEXT,
                              .rank = 2, .alpha = 1, .targets = 7, .n_ctx = 4, .ctx_init = "a photo of a",
                              .templates = simple, .n_templates = 1};
        double at[8];
        step_clock clk = {at, 0};
        clipc_model *out = NULL;
        finetune_result res;
        double t0 = now();
        if (finetune_run(m, tok, &set, rows, n, &o, clock_step, &clk, &out, &res, &err)) {
            printf("finetune %s: %s\n", finetune_method_name(method), err.message);
            continue;
        }
        double best = 1e30;
        for (int i = 1; i < clk.n; i++) best = fmin(best, at[i] - at[i - 1]);
        double flops = 2 * text_flops(c, lens, 10) + (method == FT_LORA ? 2 * 32 * vit_flops(c) : 0);
        printf("finetune %-4s batch 32: %7.1f images/s per step  %6.1f GFLOP/s  %4.0f%% of peak  (%zu trainable; "
               "setup and caching %.1f s)\n", finetune_method_name(method), 32 / best, flops / best / 1e9,
               100 * flops / best / 1e9 / peak, res.trainable, at[0] - t0 - best);
        finetune_result_free(&res);
        clipc_model_free(out);
    }
    free(rows);
    image_set_free(&set);
}

/* ---- search ------------------------------------------------------------------------ */

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* p50 and p99 of n latencies (sorted in place), in milliseconds. */
static void percentiles(double *t, int n, double *p50, double *p99) {
    qsort(t, (size_t)n, sizeof *t, compare_doubles);
    *p50 = 1e3 * t[n / 2];
    *p99 = 1e3 * t[(int)(0.99 * (n - 1) + 0.5)];
}

/* Streaming read bandwidth of this machine (GB/s): the best of a few
 * vectorised sums over a 1 GiB array on all cores; exact search, a
 * matrix-vector product, is bound by it. */
static double read_bandwidth(void) {
    size_t n = (size_t)1 << 28;
    float *a = malloc(n * sizeof *a);
    if (!a) return 0;
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 7);
    double best = 1e30, sink = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now();
        float s = 0;
        #pragma omp parallel for simd reduction(+ : s)
        for (size_t i = 0; i < n; i++) s += a[i];
        double dt = now() - t0;
        sink += s;
        best = dt < best ? dt : best;
    }
    free(a);
    if (sink == 1.0) printf(" ");
    return n * sizeof(float) / best / 1e9;
}

/* Exact top-10 (clipc's sgemv + heap) and FAISS IndexFlatIP on the same
 * random unit vectors: p50/p99 over 50 queries. */
static void bench_exact(int64_t n, int dim, double bandwidth) {
    float *rows = malloc((size_t)n * dim * sizeof *rows), *q = malloc((size_t)dim * sizeof *q);
    if (!rows || !q) {
        printf("search %lld x %d: out of memory\n", (long long)n, dim);
        free(rows), free(q);
        return;
    }
    #pragma omp parallel
    {
        rng r;
        rng_seed(&r, 1000 + (uint64_t)omp_get_thread_num());
        #pragma omp for
        for (size_t i = 0; i < (size_t)n * dim; i++) rows[i] = (float)rng_normal(&r);
    }
    clipc_normalize_rows(rows, (int)n, dim);
    enum { Q = 50 };
    double t_exact[Q], t_faiss[Q];
    search_hit hits[10];
    rng r;
    rng_seed(&r, 3);
    for (int t = 0; t < Q + 2; t++) {
        for (int j = 0; j < dim; j++) q[j] = (float)rng_normal(&r);
        clipc_normalize_rows(q, 1, dim);
        double t0 = now();
        search_exact(rows, n, dim, q, 10, hits);
        if (t >= 2) t_exact[t - 2] = now() - t0;
    }
    double p50, p99;
    percentiles(t_exact, Q, &p50, &p99);
    double gbs = (double)n * dim * sizeof(float) / (p50 / 1e3) / 1e9;
    printf("exact top-10 over %7lld x %d:  p50 %7.2f ms  p99 %7.2f ms  (%.1f GB/s, %.0f%% of read bandwidth)\n",
           (long long)n, dim, p50, p99, gbs, 100 * gbs / bandwidth);
    clipc_error err;
    ann_index *flat;
    if (ann_build(rows, n, dim, "Flat", &flat, &err)) {
        printf("FAISS: %s\n", err.message);
    } else {
        int64_t labels[10];
        float scores[10];
        rng_seed(&r, 3);
        int agree = 0;
        for (int t = 0; t < Q + 2; t++) {
            for (int j = 0; j < dim; j++) q[j] = (float)rng_normal(&r);
            clipc_normalize_rows(q, 1, dim);
            double t0 = now();
            ann_search(flat, q, 10, labels, scores, &err);
            if (t >= 2) t_faiss[t - 2] = now() - t0;
            search_exact(rows, n, dim, q, 10, hits);
            agree += labels[0] == hits[0].row;
        }
        percentiles(t_faiss, Q, &p50, &p99);
        printf("FAISS IndexFlatIP, same data:  p50 %7.2f ms  p99 %7.2f ms  (same top-1 on %d of %d queries)\n", p50,
               p99, agree, Q + 2);
        ann_free(flat);
    }
    free(rows), free(q);
}

/* HNSW on clustered unit vectors (random ones have no neighbourhoods to
 * find): build time, latency, recall@10 against exact search. */
static void bench_ann(int64_t n, int dim) {
    int C = 1000;
    float *rows = malloc((size_t)n * dim * sizeof *rows), *centres = malloc((size_t)C * dim * sizeof *centres);
    float *q = malloc((size_t)dim * sizeof *q);
    rng r;
    rng_seed(&r, 9);
    for (size_t i = 0; i < (size_t)C * dim; i++) centres[i] = (float)rng_normal(&r);
    for (int64_t i = 0; i < n; i++) {
        int c = (int)(rng_next(&r) % (uint64_t)C);
        for (int j = 0; j < dim; j++) rows[(size_t)i * dim + j] = centres[(size_t)c * dim + j] + 0.5f * (float)rng_normal(&r);
    }
    clipc_normalize_rows(rows, (int)n, dim);
    clipc_error err;
    ann_index *a;
    double t0 = now();
    if (ann_build(rows, n, dim, "HNSW32", &a, &err)) {
        printf("FAISS: %s\n", err.message);
        free(rows), free(centres), free(q);
        return;
    }
    double build = now() - t0;
    enum { Q = 200 };
    double lat[Q], lat_rr[Q];
    long found = 0, found_rr = 0;
    ann_set_effort(a, 64);
    for (int t = 0; t < Q; t++) {
        int c = (int)(rng_next(&r) % (uint64_t)C);
        for (int j = 0; j < dim; j++) q[j] = centres[(size_t)c * dim + j] + 0.5f * (float)rng_normal(&r);
        clipc_normalize_rows(q, 1, dim);
        search_hit exact[10], approx[10];
        int64_t labels[10];
        float scores[10];
        search_exact(rows, n, dim, q, 10, exact);
        double s0 = now();
        ann_search(a, q, 10, labels, scores, &err);
        lat[t] = now() - s0;
        s0 = now();
        search_ann(a, rows, n, dim, q, 10, approx, &err);
        lat_rr[t] = now() - s0;
        for (int i = 0; i < 10; i++)
            for (int j = 0; j < 10; j++) found += labels[j] == exact[i].row, found_rr += approx[j].row == exact[i].row;
    }
    double p50, p99, p50r, p99r;
    percentiles(lat, Q, &p50, &p99);
    percentiles(lat_rr, Q, &p50r, &p99r);
    printf("ANN HNSW32 over %lld x %d clustered (built in %.1f s), efSearch 64:\n", (long long)n, dim, build);
    printf("  top-10:                       p50 %7.3f ms  p99 %7.3f ms  recall@10 %.3f\n", p50, p99, found / (Q * 10.0));
    printf("  100 candidates re-ranked:     p50 %7.3f ms  p99 %7.3f ms  recall@10 %.3f\n", p50r, p99r,
           found_rr / (Q * 10.0));
    ann_free(a);
    free(rows), free(centres), free(q);
}

/* Indexing throughput: copies of the reference JPEGs that are at least
 * 224 px on both sides, into a fresh index. */
static void bench_index(clipc_model *m, const char *label) {
    const char *ref = getenv("CLIPC_REFERENCE") ? getenv("CLIPC_REFERENCE") : "../shared/reference";
    static const char *const jpegs[] = {"coffee_600x400_q90.jpg", "coffee_progressive_480x320.jpg",
                                        "rocket_427x640_q85.jpg", "rocket_exif6_320x480.jpg", "chelsea_gray_259x300.jpg"};
    char dir[] = "/tmp/clipc_bench_XXXXXX", cmd[8192], db[128];
    if (!mkdtemp(dir)) return;
    int copies = 40, n = 0;
    for (int i = 0; i < 5; i++) {
        snprintf(cmd, sizeof cmd,
                 "test -f %s/preprocess/images/%s && for k in $(seq %d); do cp %s/preprocess/images/%s %s/$k-%s; done",
                 ref, jpegs[i], copies, ref, jpegs[i], dir, jpegs[i]);
        if (system(cmd) == 0) n += copies;
    }
    if (n == 0) {
        printf("index: skipped (no reference JPEGs under %s)\n", ref);
        return;
    }
    snprintf(db, sizeof db, "%s/index.db", dir);
    clipc_error err;
    clip_index *ix;
    index_stats st;
    const char *dirs[1] = {dir};
    if (index_open(db, true, &ix, &err) == 0) {
        double t0 = now();
        int rc = index_update(ix, m, dirs, 1, NULL, &st, &err);
        double dt = now() - t0;
        if (rc) printf("index: %s\n", err.message);
        else printf("index %-9s %d JPEGs (259x300 to 600x400): %6.1f images/s (decode on a worker thread, per-batch commits)\n",
                    label, n, st.added / dt);
        index_close(ix);
    }
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) printf("(could not remove %s)\n", dir);
}

int main(int argc, char **argv) {
    /* "bench_clipc encode": only the encoders (for quick comparisons); "finetune": only fine-tuning */
    bool encode_only = argc > 1 && !strcmp(argv[1], "encode"), finetune_only = argc > 1 && !strcmp(argv[1], "finetune");
    clipc_error err;
    int threads = omp_get_max_threads();
    printf("clipc bench — %d threads; OpenBLAS %s\n", threads, openblas_get_config());
    printf("BLAS kernel: %s (OPENBLAS_CORETYPE=%s)\n", openblas_get_corename(),
           getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "unset");
    double peak = fma_peak();
    printf("machine FMA peak (fp32, %s, %d cores): %.1f GFLOP/s\n\n", fma_isa(), threads, peak);

    if (argc > 1 && !strcmp(argv[1], "caption")) { /* "bench_clipc caption": only CoCa's captions */
        bench_caption();
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "siglip")) { /* "bench_clipc siglip": only SigLIP's encoders */
        double peaks[3] = {peak, onednn_peak(CLIPC_BF16), onednn_peak(CLIPC_INT8)};
        printf("peaks: bf16 %.1f GOP/s, int8 %.1f GOP/s (oneDNN, 4096^3 matmul)\n", peaks[1], peaks[2]);
        bench_siglip(peaks);
        return 0;
    }
    clipc_model *m = clipc_model_init("ViT-B-32", 1, &err);
    if (!m) {
        fprintf(stderr, "bench: %s\n", err.message);
        return 1;
    }
    const clipc_config *c = clipc_model_config(m);
    int R = c->image_resolution, E = c->embed_dim, ctx = c->context_length;
    printf("model: random-init ViT-B-32 (%zu parameters)\n", clipc_model_param_count(m));

    /* texts: typical captions, tokenized */
    clipc_tokenizer *tok = clipc_tokenizer_new(&err);
    int32_t *tokens = malloc((size_t)64 * ctx * sizeof *tokens);
    int lens[64], total = 0;
    for (int i = 0; i < 64; i++) {
        clipc_tokenize(tok, CAPTIONS[i % 16], ctx, 1, tokens + (size_t)i * ctx, &err);
        for (lens[i] = 0; tokens[(size_t)i * ctx + lens[i]] != CLIPC_EOT; lens[i]++) {}
        lens[i]++;
        total += lens[i];
    }
    float *pixels = malloc((size_t)32 * 3 * R * R * sizeof *pixels), *out = malloc((size_t)64 * E * sizeof *out);
    float *ref_img = malloc((size_t)32 * E * sizeof *ref_img), *ref_txt = malloc((size_t)64 * E * sizeof *ref_txt);
    rng r;
    rng_seed(&r, 7);
    for (size_t i = 0; i < (size_t)32 * 3 * R * R; i++) pixels[i] = (float)rng_normal(&r);
    printf("captions: %d typical captions, %.1f tokens on average (of %d positions)\n", 16, total / 64.0, ctx);
    if (finetune_only) {
        printf("\nfine-tuning ViT-B-32 (fp32 GEMMs by OpenBLAS %s)\n", openblas_get_corename());
        bench_finetune(m, tok, peak);
        free(ref_img);
        free(ref_txt);
        goto done;
    }

    double lowp_peak[3] = {peak, 0, 0};
    for (int prec = CLIPC_FP32; prec <= CLIPC_INT8; prec++) {
        char kernel[256];
        if (clipc_model_set_precision(m, prec, &err)) {
            printf("%s: %s\n", clipc_precision_name(prec), err.message);
            continue;
        }
        if (prec != CLIPC_FP32) lowp_peak[prec] = onednn_peak(prec);
        printf("\nprecision %s: GEMMs by %s; peak %.1f %s\n", clipc_precision_name(prec),
               clipc_precision_kernel(prec, kernel, sizeof kernel), lowp_peak[prec],
               prec == CLIPC_FP32 ? "GFLOP/s (FMA loop)" : "GOP/s (oneDNN, 4096^3 matmul)");
        bench_images(m, prec, pixels, out, ref_img, lowp_peak[prec]);
        time_split(m, pixels, out);
        bench_texts(m, prec, tokens, lens, out, ref_txt, lowp_peak[prec]);
        if (prec == CLIPC_FP32) gemm_ceiling(c, 32, peak);
    }
    clipc_model_set_precision(m, CLIPC_FP32, &err);
    bench_siglip(lowp_peak);
    bench_caption();
    if (sysconf(_SC_NPROCESSORS_ONLN) > 1) bench_contention(m, pixels, out);
    free(ref_img);
    free(ref_txt);
    if (encode_only) goto done;
    bench_train("fmnist", 256, 5, tok, peak);
    bench_train("ViT-B-32", 32, 2, tok, peak);
    printf("\nfine-tuning ViT-B-32 (fp32 GEMMs by OpenBLAS %s)\n", openblas_get_corename());
    bench_finetune(m, tok, peak);

    printf("\nsearch\n");
    bench_index(m, "ViT-B-32");
    clipc_model *small = clipc_model_load("models/clipc-fmnist.safetensors", &err);
    if (small) bench_index(small, "fmnist");
    clipc_model_free(small);
    double bandwidth = read_bandwidth();
    printf("machine read bandwidth (all cores): %.1f GB/s\n", bandwidth);
    bench_exact(100000, 512, bandwidth);
    bench_exact(1000000, 512, bandwidth);
    bench_ann(100000, 512);
    double peak_after = fma_peak();
    printf("FMA peak re-measured after the runs: %.1f GFLOP/s%s\n", peak_after,
           peak_after > 1.1 * peak ? " (higher: the machine was busier at the start; shares above are overstated)" : "");
done:
    clipc_tokenizer_free(tok);
    free(tokens);
    free(pixels);
    free(out);
    clipc_model_free(m);
    return 0;
}
