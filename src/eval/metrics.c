/* metrics.c — zero-shot classification and retrieval metrics, as LAION's
 * CLIP_benchmark defines them (clip_benchmark/metrics/zeroshot_*.py):
 * acc@k, mean per-class recall, and recall@k counted as "any positive in
 * the top k". Rankings are stable sorts of the scores, so ties resolve by
 * index and every result is reproducible. */
#include "eval.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

int rank_of(const float *scores, int n, int target) {
    float s = scores[target];
    int rank = 0;
    for (int j = 0; j < n; j++) rank += scores[j] > s || (scores[j] == s && j < target);
    return rank;
}

int classification_metrics(const float *scores, int n, int C, const int *labels, class_metrics *out,
                           clipc_error *err) {
    memset(out, 0, sizeof *out);
    if (n <= 0 || C <= 0) return clipc_fail(err, "no samples or no classes to score");
    out->n_classes = C;
    out->confusion = calloc((size_t)C * C, sizeof *out->confusion);
    if (!out->confusion) return clipc_fail(err, "out of memory");
    int top = C < 5 ? C : 5;
    long hit1 = 0, hit5 = 0;
    for (int i = 0; i < n; i++) {
        const float *row = scores + (size_t)i * C;
        int y = labels[i], rank = rank_of(row, C, y), pred = 0;
        for (int k = 1; k < C; k++)
            if (row[k] > row[pred]) pred = k; /* the first maximum: rank 0 */
        hit1 += rank == 0;
        hit5 += rank < top;
        out->confusion[(size_t)y * C + pred]++;
    }
    out->acc1 = (double)hit1 / n;
    out->acc5 = (double)hit5 / n;
    /* sklearn's balanced_accuracy_score: classes absent from the labels are left out */
    double recall_sum = 0;
    int present = 0;
    for (int c = 0; c < C; c++) {
        long total = 0;
        for (int k = 0; k < C; k++) total += out->confusion[(size_t)c * C + k];
        if (total == 0) continue;
        recall_sum += (double)out->confusion[(size_t)c * C + c] / total;
        present++;
    }
    out->mean_per_class_recall = recall_sum / present;
    return 0;
}

void class_metrics_free(class_metrics *m) {
    free(m->confusion);
    memset(m, 0, sizeof *m);
}

int zeroshot_evaluate(clipc_model *m, clipc_tokenizer *tok, const image_set *s, int n, const char *const *templates,
                      int n_templates, eval_progress progress, void *ctx, class_metrics *out, clipc_error *err) {
    memset(out, 0, sizeof *out);
    int E = clipc_model_config(m)->embed_dim, C = s->n_classes;
    if (n <= 0 || n > s->count) n = s->count;
    float *features = malloc((size_t)n * E * sizeof *features), *scores = malloc((size_t)n * C * sizeof *scores);
    int rc = features && scores ? 0 : clipc_fail(err, "out of memory");
    if (rc == 0) rc = image_set_features(m, s, NULL, 0, n, features, progress, ctx, err);
    if (rc == 0)
        rc = zeroshot_cosines(m, tok, (const char *const *)s->class_names, C, templates, n_templates, features, n, scores,
                              err);
    if (rc == 0) rc = classification_metrics(scores, n, C, s->labels, out, err);
    free(features), free(scores);
    return rc;
}

/* Similarities come from one fixed blocking of GEMMs, computed twice: once
 * to read each text's positive score, once to count what beats it. The same
 * block gives bit-identical values both times, so equal scores really are
 * equal and the tie rule holds. Memory is one block of BLOCK x n_txt. */
enum { BLOCK = 256 };

static void similarity_block(const float *images, int i0, int rows, const float *texts, int n_txt, int E, float *sim) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n_txt, E, 1.0f, images + (size_t)i0 * E, E, texts, E,
                0.0f, sim, n_txt);
}

int retrieval_recall(const float *images, int n_img, const float *texts, int n_txt, int E, const int *text_image,
                     const int *ks, int n_k, double *i2t, double *t2i, clipc_error *err) {
    if (n_img <= 0 || n_txt <= 0) return clipc_fail(err, "retrieval needs at least one image and one text");
    for (int t = 0; t < n_txt; t++)
        if (text_image[t] < 0 || text_image[t] >= n_img) return clipc_fail(err, "text %d names no image", t);
    float *sim = malloc((size_t)BLOCK * n_txt * sizeof *sim);
    float *positive = malloc((size_t)n_txt * sizeof *positive);
    long *beaten_by = calloc((size_t)n_txt, sizeof *beaten_by); /* images ranked above each text's image */
    int *best_rank = malloc((size_t)n_img * sizeof *best_rank); /* best rank of an image's texts */
    if (!sim || !positive || !beaten_by || !best_rank) {
        free(sim), free(positive), free(beaten_by), free(best_rank);
        return clipc_fail(err, "out of memory");
    }
    /* Pass 1: every text's positive score; image→text ranks row by row. */
    for (int i0 = 0; i0 < n_img; i0 += BLOCK) {
        int rows = n_img - i0 < BLOCK ? n_img - i0 : BLOCK;
        similarity_block(images, i0, rows, texts, n_txt, E, sim);
        for (int t = 0; t < n_txt; t++)
            if (text_image[t] >= i0 && text_image[t] < i0 + rows)
                positive[t] = sim[(size_t)(text_image[t] - i0) * n_txt + t];
        for (int r = 0; r < rows; r++) best_rank[i0 + r] = n_txt;
        #pragma omp parallel for schedule(dynamic, 64)
        for (int t = 0; t < n_txt; t++) {
            int i = text_image[t];
            if (i < i0 || i >= i0 + rows) continue;
            int rank = rank_of(sim + (size_t)(i - i0) * n_txt, n_txt, t);
            #pragma omp critical
            if (rank < best_rank[i]) best_rank[i] = rank;
        }
    }
    /* Pass 2: text→image, how many images beat each text's own image. */
    for (int i0 = 0; i0 < n_img; i0 += BLOCK) {
        int rows = n_img - i0 < BLOCK ? n_img - i0 : BLOCK;
        similarity_block(images, i0, rows, texts, n_txt, E, sim);
        #pragma omp parallel for schedule(static)
        for (int t = 0; t < n_txt; t++) {
            float p = positive[t];
            long count = 0;
            for (int r = 0; r < rows; r++) {
                float s = sim[(size_t)r * n_txt + t];
                count += s > p || (s == p && i0 + r < text_image[t]);
            }
            beaten_by[t] += count;
        }
    }
    int with_texts = 0;
    for (int i = 0; i < n_img; i++) with_texts += best_rank[i] < n_txt;
    for (int j = 0; j < n_k; j++) {
        long hit_i = 0, hit_t = 0;
        for (int i = 0; i < n_img; i++) hit_i += best_rank[i] < ks[j]; /* images without texts never hit */
        for (int t = 0; t < n_txt; t++) hit_t += beaten_by[t] < ks[j];
        i2t[j] = with_texts ? (double)hit_i / with_texts : 0;
        t2i[j] = (double)hit_t / n_txt;
    }
    free(sim), free(positive), free(beaten_by), free(best_rank);
    return 0;
}
