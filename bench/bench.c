/* bench.c — `make bench`: throughput of a random-init ViT-B-32 on this
 * machine, as images/s and texts/s, achieved GFLOP/s, and that as a share
 * of the machine's measured FMA peak (an AVX2 FMA loop on every core).
 * Prints which OpenBLAS kernel ran. Timings take the best of several runs
 * after a warm-up. */
#include "../src/internal.h"
#include "../src/train/train.h"

#include <cblas.h>
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

char *openblas_get_config(void);
char *openblas_get_corename(void);
int openblas_get_num_threads(void);

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Peak: 10 independent 8-wide FMA chains per core (enough to cover the FMA
 * latency on two ports), all cores at once. The best of 10 short samples:
 * on a shared VM a single sample can land in a neighbour's burst.
 * Returns GFLOP/s. */
__attribute__((target("avx2,fma"))) static double fma_peak(void) {
    const long iters = 20000000;
    double best = 0;
    for (int rep = 0; rep < 10; rep++) {
        double t0 = now();
        float sink = 0;
#pragma omp parallel reduction(+ : sink)
        {
            __m256 a[10], b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
            for (int k = 0; k < 10; k++) a[k] = _mm256_set1_ps((float)k);
            for (long i = 0; i < iters; i++)
                for (int k = 0; k < 10; k++) a[k] = _mm256_fmadd_ps(a[k], b, c);
            __m256 s = a[0];
            for (int k = 1; k < 10; k++) s = _mm256_add_ps(s, a[k]);
            float out[8];
            _mm256_storeu_ps(out, s);
            sink += out[0];
        }
        double dt = now() - t0;
        double flops = (double)omp_get_max_threads() * iters * 10 * 8 * 2;
        if (flops / dt > best) best = flops / dt;
        if (sink == 12345.0f) printf(" ");
    }
    return best / 1e9;
}

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

int main(void) {
    clipc_error err;
    int threads = omp_get_max_threads();
    printf("clipc bench — %d threads; OpenBLAS %s\n", threads, openblas_get_config());
    printf("BLAS kernel: %s (OPENBLAS_CORETYPE=%s)\n", openblas_get_corename(),
           getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "unset");
    double peak = fma_peak();
    printf("machine FMA peak (fp32, AVX2, %d cores): %.1f GFLOP/s\n\n", threads, peak);

    clipc_model *m = clipc_model_init("ViT-B-32", 1, &err);
    if (!m) {
        fprintf(stderr, "bench: %s\n", err.message);
        return 1;
    }
    const clipc_config *c = clipc_model_config(m);
    int R = c->image_resolution, E = c->embed_dim, ctx = c->context_length;
    printf("model: random-init ViT-B-32 (%zu parameters), fp32\n", clipc_model_param_count(m));

    /* images */
    int image_batches[] = {1, 32};
    float *pixels = malloc((size_t)32 * 3 * R * R * sizeof *pixels), *out = malloc((size_t)64 * E * sizeof *out);
    rng r;
    rng_seed(&r, 7);
    for (size_t i = 0; i < (size_t)32 * 3 * R * R; i++) pixels[i] = (float)rng_normal(&r);
    for (int bi = 0; bi < 2; bi++) {
        int b = image_batches[bi];
        clipc_encode_image(m, pixels, b, out, &err); /* warm-up */
        double best = 1e30;
        int reps = b == 1 ? 20 : 5;
        for (int rep = 0; rep < reps; rep++) {
            double t0 = now();
            clipc_encode_image(m, pixels, b, out, &err);
            double dt = now() - t0;
            best = dt < best ? dt : best;
        }
        double gflops = vit_flops(c) * b / best / 1e9;
        printf("encode_image  batch %2d: %7.1f images/s  %6.1f GFLOP/s  %4.0f%% of peak\n", b, b / best, gflops,
               100 * gflops / peak);
    }

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
    printf("captions: %d typical captions, %.1f tokens on average (of %d positions)\n", 16, total / 64.0, ctx);
    int text_batches[] = {1, 64};
    for (int bi = 0; bi < 2; bi++) {
        int b = text_batches[bi];
        clipc_encode_text(m, tokens, b, out, &err);
        double best = 1e30;
        int reps = b == 1 ? 100 : 10;
        for (int rep = 0; rep < reps; rep++) {
            double t0 = now();
            clipc_encode_text(m, tokens, b, out, &err);
            double dt = now() - t0;
            best = dt < best ? dt : best;
        }
        double gflops = text_flops(c, lens, b) / best / 1e9;
        printf("encode_text   batch %2d: %7.1f texts/s   %6.1f GFLOP/s  %4.0f%% of peak\n", b, b / best, gflops,
               100 * gflops / peak);
    }
    bench_train("fmnist", 256, 5, tok, peak);
    bench_train("ViT-B-32", 32, 2, tok, peak);
    double peak_after = fma_peak();
    printf("FMA peak re-measured after the runs: %.1f GFLOP/s%s\n", peak_after,
           peak_after > 1.1 * peak ? " (higher: the machine was busier at the start; shares above are overstated)" : "");
    clipc_tokenizer_free(tok);
    free(tokens);
    free(pixels);
    free(out);
    clipc_model_free(m);
    return 0;
}
