/* index.h — an incremental image index for semantic search: metadata and
 * embeddings in SQLite (WAL, one commit per batch, so a killed indexer
 * loses at most the batch in flight), plus a contiguous float32 matrix
 * file beside the database that searches map in one piece. Internal to
 * libclipc; the CLI, the server and the tests use it. */
#ifndef CLIPC_INDEX_H
#define CLIPC_INDEX_H

#include "../internal.h"

typedef struct clip_index clip_index;

/* Opens (creating when writer) the index at path. A writer holds an
 * exclusive lock for its lifetime; a second one fails with "index is
 * locked". */
int index_open(const char *path, bool writer, clip_index **out, clipc_error *err);
void index_close(clip_index *ix);

/* A model's identity: its config and a hash of its parameters. */
void model_fingerprint(const clipc_model *m, char out[64]);
/* Binds an empty index to the model, or checks that the index was built by
 * it (refusing another model or embedding size with a clear message). */
int index_check_model(clip_index *ix, const clipc_model *m, clipc_error *err);

/* What an update did. */
typedef struct index_stats {
    long seen, unchanged, added, updated, removed, failed, failed_before;
} index_stats;

/* Callbacks of a long update (any may be NULL): progress after each
 * committed batch, and each image that could not be indexed. */
typedef struct index_callbacks {
    void (*progress)(void *ctx, long done, long total);
    void (*skipped)(void *ctx, const char *path, const char *why);
    void *ctx;
} index_callbacks;

/* Brings the index up to date with the image files (.jpg/.jpeg/.png) under
 * dirs: new and changed files (by size and mtime) are embedded, files gone
 * from those folders are dropped, unchanged ones are left alone. Images
 * are decoded on a worker thread while the model encodes the previous
 * batch; each batch is one transaction. */
int index_update(clip_index *ix, clipc_model *m, const char *const *dirs, int n_dirs, const index_callbacks *cb,
                 index_stats *stats, clipc_error *err);

/* The embeddings as one matrix: rows of dim floats (L2-normalised), with
 * each row's image id. Mapped from the matrix file when it is current,
 * else rebuilt from the database (and saved for the next search). */
typedef struct index_matrix {
    int64_t count;
    int dim;
    const int64_t *ids;
    const float *rows;
    void *map;       /* the mapping (or malloc'd block) holding both */
    size_t map_len;
    bool mapped;
    uint64_t generation;
} index_matrix;

int index_matrix_load(clip_index *ix, index_matrix *out, clipc_error *err);
void index_matrix_free(index_matrix *mx);

/* Path of image id (malloc'd), or NULL with err set. */
char *index_path_of(clip_index *ix, int64_t id, clipc_error *err);
/* A path as a response may show it (malloc'd, NULL when out of memory):
 * relative to the indexed folder that holds it, led by that folder's name
 * ("Pictures/2024/cat.jpg"), else the file name; always valid UTF-8 (an
 * invalid byte becomes U+FFFD), so no absolute path leaves the machine. */
char *index_display_path(clip_index *ix, const char *path);
/* The database's change counter (each committed batch bumps it). */
uint64_t index_generation(clip_index *ix);
/* Number of indexed images. */
int64_t index_count(clip_index *ix);
/* The model fingerprint and embedding size recorded in the index. */
int index_model_info(clip_index *ix, char fingerprint[64], int *dim);
/* Where the index's model is, as `clipc index -m` named it (a file's absolute
 * path, or a pulled model's name), so search and serve can find it without
 * -m: recorded with index_set_model_path, read with index_model_path (0 when
 * the index has one; the file may since have moved). */
int index_set_model_path(clip_index *ix, const char *path, clipc_error *err);
int index_model_path(clip_index *ix, char *out, size_t cap);
const char *index_db_path(const clip_index *ix);

/* ---- search (search.c) ------------------------------------------------------ */

typedef struct search_hit {
    int64_t row, id;
    float score;
} search_hit;

/* The k rows of rows [n, dim] with the largest dot product with q, best
 * first, ties to the lower row; returns how many (min(k, n)). */
int search_exact(const float *rows, int64_t n, int dim, const float *q, int k, search_hit *hits);

/* A query: terms combined as sum_i weight_i * normalize(embed(term_i)).
 * Syntax: plain text, or quoted terms joined by + and -, each with an
 * optional weight: "beach" + "sunset" - 0.5:"people" ; 2:"red dress". */
typedef struct query_term {
    float weight;  /* with its sign */
    char *text;
} query_term;

int query_parse(const char *query, query_term **terms, int *n, clipc_error *err);
void query_terms_free(query_term *terms, int n);
/* Combines term embeddings e [n, dim] (any norm) with their weights into
 * the normalised query vector q; fails when they cancel out. */
int query_combine(const query_term *terms, int n, const float *e, int dim, float *q, clipc_error *err);
/* Embeds each term's text and combines them. */
int query_vector(clipc_model *m, clipc_tokenizer *tok, const char *query, float *q, clipc_error *err);

/* ---- approximate search with FAISS (ann.c, faiss_shim.cpp) ------------------------ */

typedef struct ann_index ann_index;
/* Builds an inner-product index of rows [n, dim] from a FAISS factory
 * string ("HNSW32", "IVF1024,Flat"); IVF trains on the rows. */
int ann_build(const float *rows, int64_t n, int dim, const char *factory, ann_index **out, clipc_error *err);
int ann_save(const ann_index *a, const char *path, clipc_error *err);
int ann_load(const char *path, ann_index **out, clipc_error *err);
/* Candidates: the k rows with the largest inner product (labels = rows). */
int ann_search(const ann_index *a, const float *q, int k, int64_t *rows, float *scores, clipc_error *err);
/* Search-time accuracy knob: efSearch for HNSW, nprobe for IVF. */
void ann_set_effort(ann_index *a, int effort);
void ann_free(ann_index *a);

/* ANN candidates (k * 10, at least 100) re-ranked exactly against rows. */
int search_ann(const ann_index *a, const float *rows, int64_t n, int dim, const float *q, int k, search_hit *hits,
               clipc_error *err);

#endif
