/* test_index.c — the image index and its search: query parsing and
 * arithmetic against hand-computed vectors, exact top-k against a brute
 * force, FAISS recall, and the index's incremental updates (add, modify,
 * delete, rename), its writer lock and its model check. */
#include "test.h"
#include "../src/index/index.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void check_query_parse(void) {
    query_term *t;
    int n;
    clipc_error err;
    CHECK(query_parse("\"beach\" + \"sunset\" - 0.5:\"people\"", &t, &n, &err) == 0 && n == 3 && t[0].weight == 1 &&
              t[1].weight == 1 && t[2].weight == -0.5f && !strcmp(t[0].text, "beach") && !strcmp(t[2].text, "people"),
          "arithmetic query parsed wrongly");
    if (n) query_terms_free(t, n);
    CHECK(query_parse("2:\"red dress\"", &t, &n, &err) == 0 && n == 1 && t[0].weight == 2 &&
              !strcmp(t[0].text, "red dress"),
          "weighted term parsed wrongly");
    if (n) query_terms_free(t, n);
    CHECK(query_parse("  a red dress  ", &t, &n, &err) == 0 && n == 1 && t[0].weight == 1 &&
              !strcmp(t[0].text, "a red dress"),
          "plain text query parsed wrongly");
    if (n) query_terms_free(t, n);
    CHECK(query_parse("-\"people\" + \"say \\\"hi\\\"\"", &t, &n, &err) == 0 && n == 2 && t[0].weight == -1 &&
              !strcmp(t[1].text, "say \"hi\""),
          "leading minus or escaped quote parsed wrongly");
    if (n) query_terms_free(t, n);
    static const struct { const char *q, *want; } bad[] = {
        {"\"beach", "unterminated quote"},
        {"\"a\" \"b\"", "expected + or -"},
        {"\"a\" + x:\"b\"", "expected a quoted term"},
        {"\"a\" + \"\"", "empty term"},
        {"   ", "empty query"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(query_parse(bad[i].q, &t, &n, &err) != 0 && strstr(err.message, bad[i].want),
              "query %s: wanted an error with '%s', got '%s'", bad[i].q, bad[i].want, err.message);
}

static void check_query_combine(void) {
    /* e0 = (3, 0, 0), e1 = (0, 2, 0), e2 = (0, 0, 5): terms normalise to
     * the unit axes, so 2:"a" + "b" - "c" = (2, 1, -1) / sqrt(6). */
    const float e[9] = {3, 0, 0, 0, 2, 0, 0, 0, 5};
    query_term t[3] = {{2, "a"}, {1, "b"}, {-1, "c"}};
    float q[3];
    clipc_error err;
    CHECK(query_combine(t, 3, e, 3, q, &err) == 0, "query_combine failed");
    double s6 = sqrt(6.0);
    CHECK(fabs(q[0] - 2 / s6) < 1e-6 && fabs(q[1] - 1 / s6) < 1e-6 && fabs(q[2] + 1 / s6) < 1e-6,
          "2:a + b - c = (%g, %g, %g), want (2, 1, -1)/sqrt(6)", q[0], q[1], q[2]);
    query_term same[2] = {{1, "a"}, {-1, "a"}};
    const float e2[6] = {1, 2, 3, 2, 4, 6};
    CHECK(query_combine(same, 2, e2, 3, q, &err) != 0 && strstr(err.message, "cancel out"),
          "\"a\" - \"a\" should be refused");
}

static void check_exact_search(void) {
    enum { N = 5000, D = 8, K = 10 };
    float *rows = malloc(sizeof(float) * N * D), q[D];
    rng r;
    rng_seed(&r, 11);
    for (int i = 0; i < N * D; i++) rows[i] = (float)((int)(rng_next(&r) % 5) - 2); /* ties galore */
    for (int j = 0; j < D; j++) q[j] = (float)((int)(rng_next(&r) % 5) - 2);
    search_hit hits[K];
    int got = search_exact(rows, N, D, q, K, hits);
    /* brute force: scores exact in float; best first, ties to the lower row */
    int *order = malloc(sizeof(int) * N);
    float *s = malloc(sizeof(float) * N);
    for (int i = 0; i < N; i++) {
        order[i] = i;
        s[i] = 0;
        for (int j = 0; j < D; j++) s[i] += rows[i * D + j] * q[j];
    }
    for (int a = 0; a < K; a++)
        for (int b = a + 1; b < N; b++)
            if (s[order[b]] > s[order[a]] || (s[order[b]] == s[order[a]] && order[b] < order[a])) {
                int t = order[a];
                order[a] = order[b], order[b] = t;
            }
    int same = got == K;
    for (int i = 0; i < K && same; i++) same = hits[i].row == order[i] && hits[i].score == s[order[i]];
    CHECK(same, "exact top-%d differs from the brute force", K);
    search_hit all[8];
    CHECK(search_exact(rows, 3, D, q, 8, all) == 3, "k larger than the set returns every row");
    free(rows), free(order), free(s);
}

static void check_ann_recall(void) {
    /* 20,000 unit vectors around 200 centres in 32-d; 100 queries. */
    enum { N = 20000, D = 32, C = 200, Q = 100, K = 10 };
    float *rows = malloc(sizeof(float) * N * D), *centres = malloc(sizeof(float) * C * D), q[D];
    rng r;
    rng_seed(&r, 5);
    for (int i = 0; i < C * D; i++) centres[i] = (float)rng_normal(&r);
    for (int i = 0; i < N; i++) {
        int c = (int)(rng_next(&r) % C);
        for (int j = 0; j < D; j++) rows[i * D + j] = centres[c * D + j] + 0.3f * (float)rng_normal(&r);
    }
    clipc_normalize_rows(rows, N, D);
    ann_index *a;
    clipc_error err;
    int rc = ann_build(rows, N, D, "HNSW32", &a, &err);
    CHECK(rc == 0, "ann_build: %s", err.message);
    if (rc) {
        free(rows), free(centres);
        return;
    }
    ann_set_effort(a, 64);
    long found = 0, found_reranked = 0;
    for (int t = 0; t < Q; t++) {
        int c = (int)(rng_next(&r) % C);
        for (int j = 0; j < D; j++) q[j] = centres[c * D + j] + 0.3f * (float)rng_normal(&r);
        clipc_normalize_rows(q, 1, D);
        search_hit exact[K], approx[K];
        int64_t labels[K];
        float scores[K];
        search_exact(rows, N, D, q, K, exact);
        ann_search(a, q, K, labels, scores, &err);
        search_ann(a, rows, N, D, q, K, approx, &err);
        for (int i = 0; i < K; i++)
            for (int j = 0; j < K; j++) {
                found += labels[j] == exact[i].row;
                found_reranked += approx[j].row == exact[i].row;
            }
    }
    double recall = (double)found / (Q * K), recall_rr = (double)found_reranked / (Q * K);
    printf("  HNSW32 (efSearch 64) recall@10 vs exact: %.3f; with 100 candidates re-ranked: %.3f\n", recall, recall_rr);
    CHECK(recall >= 0.95 && recall_rr >= recall, "ANN recall@10 %.3f (re-ranked %.3f), want >= 0.95", recall, recall_rr);
    /* save and load round trip */
    char path[] = "/tmp/clipc_ann_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    ann_index *b = NULL;
    int64_t l1[K], l2[K];
    float s1[K], s2[K];
    CHECK(ann_save(a, path, &err) == 0 && ann_load(path, &b, &err) == 0, "ANN save/load: %s", err.message);
    if (b) {
        ann_set_effort(b, 64);
        ann_search(a, q, K, l1, s1, &err);
        ann_search(b, q, K, l2, s2, &err);
        CHECK(!memcmp(l1, l2, sizeof l1), "a reloaded ANN index answers differently");
    }
    unlink(path);
    ann_free(a);
    ann_free(b);
    free(rows), free(centres);
}

static char tmp[] = "/tmp/clipc_index_XXXXXX";

static int update(clip_index *ix, clipc_model *m, const char *dir, index_stats *st) {
    clipc_error err;
    const char *dirs[1] = {dir};
    int rc = index_update(ix, m, dirs, 1, NULL, st, &err);
    CHECK(rc == 0, "index_update: %s", err.message);
    return rc;
}

/* The stored embedding of path (0 if absent). */
static int embedding_of(clip_index *ix, const char *path, float *out, int dim) {
    index_matrix mx;
    clipc_error err;
    if (index_matrix_load(ix, &mx, &err)) return 0;
    int found = 0;
    for (int64_t r = 0; r < mx.count && !found; r++) {
        char *p = index_path_of(ix, mx.ids[r], &err);
        if (p && !strcmp(p, path)) {
            memcpy(out, mx.rows + (size_t)r * dim, (size_t)dim * sizeof *out);
            found = 1;
        }
        free(p);
    }
    index_matrix_free(&mx);
    return found;
}

static void check_incremental(void) {
    if (!mkdtemp(tmp)) return;
    char photos[512], db[512], images[4096];
    snprintf(photos, sizeof photos, "%s/photos", tmp);
    snprintf(db, sizeof db, "%s/index.db", tmp);
    if (!realpath(ref_path("preprocess/images"), images)) snprintf(images, sizeof images, "/nonexistent");
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "mkdir -p %s/sub", photos);
    run_cmd(cmd);
    snprintf(cmd, sizeof cmd, "cp %s/chelsea_451x300.png %s/coffee_600x400_q90.jpg %s/sub/ && cp %s/rocket_427x640_q85.jpg %s/",
             images, images, photos, images, photos);
    run_cmd(cmd);
    clipc_error err;
    clipc_model *m = clipc_model_load(ref_path("tiny/model.safetensors"), &err);
    clip_index *ix = NULL;
    CHECK(m && index_open(db, true, &ix, &err) == 0, "open: %s", err.message);
    if (!m || !ix) {
        clipc_model_free(m);
        return;
    }
    int E = clipc_model_config(m)->embed_dim;
    index_stats st;
    /* first run: three images */
    update(ix, m, photos, &st);
    CHECK(st.added == 3 && index_count(ix) == 3, "first run: %ld added, %lld indexed", st.added, (long long)index_count(ix));
    /* nothing changed: nothing embedded */
    update(ix, m, photos, &st);
    CHECK(st.unchanged == 3 && st.added + st.updated + st.removed == 0, "second run changed something");
    /* add */
    snprintf(cmd, sizeof cmd, "cp %s/astronaut_512x512.png %s/sub/", images, photos);
    run_cmd(cmd);
    update(ix, m, photos, &st);
    CHECK(st.added == 1 && st.unchanged == 3 && index_count(ix) == 4, "add: %ld added, %ld unchanged", st.added, st.unchanged);
    /* modify: other content under the same name */
    char path[1024];
    float before[64], after[64];
    snprintf(path, sizeof path, "%s/sub/coffee_600x400_q90.jpg", photos);
    char *real = realpath(path, NULL);
    int had = real && embedding_of(ix, real, before, E);
    snprintf(cmd, sizeof cmd, "cp %s/chelsea_gray_259x300.jpg %s && touch -d '+1 minute' %s", images, path, path);
    run_cmd(cmd);
    update(ix, m, photos, &st);
    int has = real && embedding_of(ix, real, after, E);
    CHECK(st.updated == 1 && st.unchanged == 3 && had && has && memcmp(before, after, E * sizeof(float)) != 0,
          "modify: %ld re-embedded, embedding changed: %d", st.updated, had && has && memcmp(before, after, E * sizeof(float)));
    /* and the new embedding is the image's */
    float direct[64], pixels[3 * 32 * 32];
    int R = clipc_model_config(m)->image_resolution;
    if (R == 32 && clipc_preprocess_file(path, R, pixels, &err) == 0 && clipc_encode_image(m, pixels, 1, direct, &err) == 0) {
        clipc_normalize_rows(direct, 1, E);
        double d = 0;
        for (int i = 0; i < E; i++) d = fmax(d, fabs(direct[i] - after[i]));
        CHECK(d < 1e-5, "stored embedding differs from encoding the file: %g", d);
    }
    /* delete */
    snprintf(cmd, sizeof cmd, "rm %s/rocket_427x640_q85.jpg", photos);
    run_cmd(cmd);
    update(ix, m, photos, &st);
    CHECK(st.removed == 1 && index_count(ix) == 3, "delete: %ld removed, %lld indexed", st.removed, (long long)index_count(ix));
    /* rename: the old path goes, the new one comes */
    snprintf(cmd, sizeof cmd, "mv %s/sub/astronaut_512x512.png %s/astronaut.png", photos, photos);
    run_cmd(cmd);
    update(ix, m, photos, &st);
    snprintf(path, sizeof path, "%s/astronaut.png", photos);
    free(real);
    real = realpath(path, NULL);
    CHECK(st.removed == 1 && st.added == 1 && index_count(ix) == 3 && real && embedding_of(ix, real, after, E),
          "rename: %ld removed, %ld added", st.removed, st.added);
    free(real);
    /* an unreadable file is skipped, recorded, and not retried until it changes */
    snprintf(cmd, sizeof cmd, "printf 'not an image' > %s/broken.jpg", photos);
    run_cmd(cmd);
    update(ix, m, photos, &st);
    CHECK(st.failed == 1 && index_count(ix) == 3, "broken image: %ld failed", st.failed);
    update(ix, m, photos, &st);
    CHECK(st.failed == 0 && st.failed_before == 1, "broken image retried: %ld failed, %ld known", st.failed, st.failed_before);
    /* one writer at a time */
    clip_index *second = NULL;
    CHECK(index_open(db, true, &second, &err) != 0 && strstr(err.message, "index is locked"),
          "a second writer was let in: %s", second ? "opened" : err.message);
    index_close(second);
    /* the index belongs to its model */
    clipc_model *other = clipc_model_init("tiny", 99, &err);
    CHECK(other && index_check_model(ix, other, &err) != 0 && strstr(err.message, "was built with another model"),
          "another model was accepted: %s", err.message);
    clipc_model_free(other);
    index_close(ix);
    clipc_model_free(m);
}

void test_index(void) {
    check_query_parse();
    check_query_combine();
    check_exact_search();
    check_ann_recall();
    check_incremental();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    run_cmd(cmd);
}
