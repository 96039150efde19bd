/* cmd_index.c — `clipc index`, `clipc search` and `clipc export`: an
 * incremental image index over folders, and queries against it. */
#include "cli.h"
#include "../index/index.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- index ---------------------------------------------------------------------- */

typedef struct index_progress {
    double start;
    long skipped;
} index_progress;

static void on_progress(void *ctx, long done, long total) {
    index_progress *p = ctx;
    cli_progress("indexing", done, total, p->start);
}

static void on_skipped(void *ctx, const char *path, const char *why) {
    index_progress *p = ctx;
    p->skipped++;
    (void)path; /* why names the file */
    fprintf(stderr, "%sclipc: warning: skipped %s\n", cli_progress_enabled() ? "\n" : "", why);
}

int cmd_index(int argc, char **argv) {
    const char *db = NULL, *model_path = NULL;
    const char **dirs = malloc((size_t)(argc + 1) * sizeof *dirs);
    int n_dirs = 0;
    if (!dirs) return cli_error("out of memory");
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--db") && i + 1 < argc) db = argv[++i];
        else if (!strcmp(argv[i], "-m") && i + 1 < argc) model_path = argv[++i];
        else if (!strcmp(argv[i], "--help")) {
            printf("usage: clipc index --db FILE [-m MODEL] DIR...\n"
                   "  Indexes the .jpg/.jpeg/.png/.tif/.tiff/.webp images under each DIR (recursively) into FILE (SQLite).\n"
                   "  Unchanged files (same path, size and mtime) are skipped, changed ones re-embedded,\n"
                   "  deleted ones dropped. Every batch is committed, so an interrupted run loses at most\n"
                   "  one batch and the next run completes it. Unreadable images are reported and skipped.\n");
            free(dirs);
            return 0;
        } else if (argv[i][0] == '-') {
            free(dirs);
            return cli_unexpected("index", cmd_index, argv[i]);
        } else dirs[n_dirs++] = argv[i];
    }
    if (!db || n_dirs == 0) {
        free(dirs);
        return cli_error(!db ? "index: needs --db FILE" : "index: no folder given");
    }
    for (int i = 0; i < n_dirs; i++) { /* before the database is created: a bad folder leaves no file behind */
        struct stat st;
        bool found = stat(dirs[i], &st) == 0;
        if (!found || !S_ISDIR(st.st_mode)) {
            int rc = cli_error("%s: %s", dirs[i], found ? "not a folder" : strerror(errno));
            free(dirs);
            return rc;
        }
    }
    clipc_error err;
    clip_index *ix;
    if (index_open(db, true, &ix, &err)) {
        free(dirs);
        return cli_error("%s", err.message);
    }
    clipc_model *m = cli_load_model(model_path);
    int rc = m ? 0 : 1;
    index_progress p = {cli_now(), 0};
    index_callbacks cb = {on_progress, on_skipped, &p};
    index_stats st;
    if (rc == 0 && index_update(ix, m, dirs, n_dirs, &cb, &st, &err)) rc = cli_error("%s", err.message);
    if (rc == 0) {
        double secs = cli_now() - p.start;
        long embedded = st.added + st.updated + st.failed;
        printf("%s: %lld images. This run: %ld found, %ld unchanged, %ld added, %ld re-embedded, %ld removed, "
               "%ld unreadable (%ld known unreadable, skipped)",
               db, (long long)index_count(ix), st.seen, st.unchanged, st.added, st.updated, st.removed, st.failed,
               st.failed_before);
        if (embedded) printf("; %.1f images/s", embedded / (secs > 1e-9 ? secs : 1e-9));
        printf("\n");
    }
    if (rc == 0 && model_path) { /* so search and serve find the model without -m */
        char *abs = realpath(model_path, NULL); /* a file; else a pulled model's name, kept as given */
        if (index_set_model_path(ix, abs ? abs : model_path, &err)) rc = cli_error("%s", err.message);
        free(abs);
    }
    clipc_model_free(m);
    index_close(ix);
    free(dirs);
    return rc;
}

/* The model to query the index with: -m, else the one `clipc index -m` recorded, else the default.
 * path receives the recorded one (cap bytes). */
const char *cli_index_model(clip_index *ix, const char *model_path, char *path, size_t cap) {
    if (model_path || index_model_path(ix, path, cap)) return model_path;
    fprintf(stderr, "using the index's model %s\n", path);
    return path;
}

/* ---- search ------------------------------------------------------------------------- */

/* The query vector: text/arithmetic, or an image file. */
static int make_query(clipc_model *m, const char *text, const char *image, float *q) {
    clipc_error err;
    const clipc_config *c = clipc_model_config(m);
    if (image) {
        float *pixels = malloc((size_t)3 * c->image_resolution * c->image_resolution * sizeof *pixels);
        int rc = pixels ? 0 : cli_error("out of memory");
        if (rc == 0 && (clipc_model_preprocess_file(m, image, pixels, &err) ||
                        clipc_encode_image(m, pixels, 1, q, &err)))
            rc = cli_error("%s", err.message);
        if (rc == 0) clipc_normalize_rows(q, 1, c->embed_dim);
        free(pixels);
        return rc;
    }
    clipc_tokenizer *tok = clipc_model_tokenizer(m, &err);
    int rc = !tok || query_vector(m, tok, text, q, &err) ? cli_error("%s", err.message) : 0;
    clipc_tokenizer_free(tok);
    return rc;
}

/* The ANN index beside the database (DB.faiss), rebuilt when the matrix
 * has changed since it was made (its generation is in DB.faiss.gen). */
static int open_ann(const char *db, const index_matrix *mx, const char *factory, ann_index **out) {
    char path[4200], gen_path[4300], gen[32] = "";
    snprintf(path, sizeof path, "%s.faiss", db);
    snprintf(gen_path, sizeof gen_path, "%s.faiss.gen", db);
    FILE *f = fopen(gen_path, "r");
    if (f) {
        if (!fgets(gen, sizeof gen, f)) gen[0] = '\0';
        fclose(f);
    }
    clipc_error err;
    if (strtoull(gen, NULL, 10) == mx->generation && gen[0] && ann_load(path, out, &err) == 0) return 0;
    fprintf(stderr, "building the approximate index (%s) over %lld embeddings...\n", factory, (long long)mx->count);
    if (ann_build(mx->rows, mx->count, mx->dim, factory, out, &err)) return cli_error("%s", err.message);
    snprintf(gen, sizeof gen, "%llu\n", (unsigned long long)mx->generation);
    if (ann_save(*out, path, &err) == 0) write_file_atomic(gen_path, gen, strlen(gen), NULL);
    return 0;
}

int cmd_search(int argc, char **argv) {
    const char *db = NULL, *model_path = NULL, *image = NULL, *query = NULL, *ann_factory = NULL;
    long k = 10;
    bool json = false;
    for (int i = 0; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--db") && v) db = argv[++i];
        else if (!strcmp(argv[i], "-m") && v) model_path = argv[++i];
        else if (!strcmp(argv[i], "--image") && v) image = argv[++i];
        else if (!strcmp(argv[i], "--ann") && v) ann_factory = argv[++i];
        else if (!strcmp(argv[i], "-k")) {
            if (!cli_int("-k", v, 1, 10000, &k)) return 1;
            i++;
        } else if (!strcmp(argv[i], "--json")) json = true;
        else if (!strcmp(argv[i], "--help")) {
            printf("usage: clipc search --db FILE [-m MODEL] [-k K] [--json] [--ann FACTORY] (QUERY | --image FILE)\n"
                   "  QUERY is text, or quoted terms with + and - and optional weights:\n"
                   "    clipc search --db photos.db '\"beach\" + \"sunset\" - \"people\"'\n"
                   "    clipc search --db photos.db '2:\"red dress\" + \"studio\"'\n"
                   "  Prints rank, score (cosine) and path. Exact search by default; --ann HNSW32 (or\n"
                   "  IVF1024,Flat, any FAISS factory string) searches an approximate FAISS index built\n"
                   "  beside FILE and re-ranks its candidates exactly.\n");
            return 0;
        } else if (!strcmp(argv[i], "--")) {
            if (i + 1 < argc) query = argv[++i];
        } else if (argv[i][0] == '-' && !(argv[i][1] == '\0')) return cli_unexpected("search", cmd_search, argv[i]);
        else if (query) return cli_error("search: one QUERY only (quote it)");
        else query = argv[i];
    }
    if (!db) return cli_error("search: needs --db FILE");
    if (!query == !image) return cli_error("search: give a QUERY or --image FILE");
    clipc_error err;
    clip_index *ix;
    if (index_open(db, false, &ix, &err)) return cli_error("%s", err.message);
    char recorded[4096];
    clipc_model *m = cli_load_model(cli_index_model(ix, model_path, recorded, sizeof recorded));
    int rc = m ? 0 : 1;
    if (rc == 0 && index_check_model(ix, m, &err)) rc = cli_error("%s", err.message);
    index_matrix mx = {0};
    if (rc == 0 && index_matrix_load(ix, &mx, &err)) rc = cli_error("%s", err.message);
    float *q = m ? malloc((size_t)clipc_model_config(m)->embed_dim * sizeof *q) : NULL;
    search_hit *hits = malloc((size_t)k * sizeof *hits);
    if (rc == 0 && (!q || !hits)) rc = cli_error("out of memory");
    if (rc == 0) rc = make_query(m, query, image, q);
    int got = 0;
    ann_index *ann = NULL;
    if (rc == 0 && ann_factory) {
        rc = open_ann(db, &mx, ann_factory, &ann);
        if (rc == 0) {
            ann_set_effort(ann, 128);
            got = search_ann(ann, mx.rows, mx.count, mx.dim, q, (int)k, hits, &err);
            if (got < 0) rc = cli_error("%s", err.message);
        }
    } else if (rc == 0) {
        got = search_exact(mx.rows, mx.count, mx.dim, q, (int)k, hits);
        if (got < 0) rc = cli_error("out of memory");
    }
    if (rc == 0 && json) printf("[");
    for (int i = 0; i < got && rc == 0; i++) {
        int64_t id = mx.ids[hits[i].row];
        char *path = index_path_of(ix, id, &err);
        if (!path) {
            rc = cli_error("%s", err.message);
            break;
        }
        if (json) {
            printf("%s\n  {\"rank\": %d, \"score\": %.6f, \"id\": %lld, \"path\": ", i ? "," : "", i + 1, hits[i].score,
                   (long long)id);
            cli_json_string(path);
            printf("}");
        } else printf("%3d  %.4f  %s\n", i + 1, hits[i].score, path);
        free(path);
    }
    if (rc == 0 && json) printf("%s]\n", got ? "\n" : "");
    ann_free(ann);
    free(q), free(hits);
    index_matrix_free(&mx);
    clipc_model_free(m);
    index_close(ix);
    return rc;
}

/* ---- export ------------------------------------------------------------------------- */

int cmd_export(int argc, char **argv) {
    const char *db = NULL, *npy = NULL, *meta = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--db") && i + 1 < argc) db = argv[++i];
        else if (!strcmp(argv[i], "--npy") && i + 1 < argc) npy = argv[++i];
        else if (!strcmp(argv[i], "--meta") && i + 1 < argc) meta = argv[++i];
        else if (!strcmp(argv[i], "--help")) {
            printf("usage: clipc export --db FILE --npy EMB.npy --meta META.csv\n"
                   "  The embeddings as float16 [n, dim] (L2-normalised) and, row for row, a CSV with\n"
                   "  image_path and id: clip-retrieval's convention, for FAISS/numpy elsewhere.\n");
            return 0;
        } else return cli_unexpected("export", cmd_export, argv[i]);
    }
    if (!db || !npy || !meta) return cli_error("export: needs --db FILE --npy EMB.npy --meta META.csv");
    clipc_error err;
    clip_index *ix;
    if (index_open(db, false, &ix, &err)) return cli_error("%s", err.message);
    index_matrix mx = {0};
    int rc = index_matrix_load(ix, &mx, &err) ? cli_error("%s", err.message) : 0;
    uint16_t *half = rc == 0 ? malloc((size_t)(mx.count ? mx.count : 1) * mx.dim * sizeof *half) : NULL;
    if (rc == 0 && !half) rc = cli_error("out of memory");
    for (size_t i = 0; rc == 0 && i < (size_t)mx.count * mx.dim; i++) half[i] = f32_to_f16(mx.rows[i]);
    char *csv = NULL;
    size_t csv_len = 0;
    FILE *f = rc == 0 ? open_memstream(&csv, &csv_len) : NULL;
    if (rc == 0 && !f) rc = cli_error("out of memory");
    if (f) {
        fprintf(f, "image_path,id\n");
        for (int64_t r = 0; r < mx.count && rc == 0; r++) {
            char *path = index_path_of(ix, mx.ids[r], &err);
            if (!path) {
                rc = cli_error("%s", err.message);
                break;
            }
            bool quote = strpbrk(path, ",\"\n") != NULL; /* RFC 4180 */
            if (quote) {
                fputc('"', f);
                for (char *p = path; *p; p++) {
                    if (*p == '"') fputc('"', f);
                    fputc(*p, f);
                }
                fputc('"', f);
            } else fputs(path, f);
            fprintf(f, ",%lld\n", (long long)mx.ids[r]);
            free(path);
        }
        fclose(f);
    }
    int64_t shape[2] = {mx.count, mx.dim};
    if (rc == 0 && npy_write(npy, "<f2", 2, shape, half, &err)) rc = cli_error("%s", err.message);
    if (rc == 0 && write_file_atomic(meta, csv, csv_len, &err)) rc = cli_error("%s", err.message);
    if (rc == 0) fprintf(stderr, "wrote %lld embeddings of dimension %d to %s and %s\n", (long long)mx.count, mx.dim, npy, meta);
    free(csv), free(half);
    index_matrix_free(&mx);
    index_close(ix);
    return rc;
}
