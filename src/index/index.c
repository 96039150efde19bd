/* index.c — the image index's storage: SQLite (WAL) for metadata and
 * embeddings, a writer lock, the model binding, and the contiguous matrix
 * file (DB.matrix) that searches map whole.
 *
 * Crash safety comes from SQLite alone: every batch of embeddings is one
 * transaction, and each commit bumps meta.generation. The matrix file is a
 * cache stamped with the generation it was built from; a stale or missing
 * one is rebuilt from the database, written to a temporary and renamed. */
#include "index.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct clip_index {
    sqlite3 *db;
    int lock_fd; /* the writer's flock, or -1 */
    char path[4096];
};

static int sql_fail(clip_index *ix, clipc_error *err, const char *what) {
    return clipc_fail(err, "%s: %s: %s", ix->path, what, sqlite3_errmsg(ix->db));
}

static int exec(clip_index *ix, const char *sql, clipc_error *err) {
    char *msg = NULL;
    if (sqlite3_exec(ix->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        clipc_fail(err, "%s: %s", ix->path, msg ? msg : sqlite3_errmsg(ix->db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS images(id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, size INTEGER NOT NULL,"
    " mtime INTEGER NOT NULL, embedding BLOB NOT NULL);"
    "CREATE TABLE IF NOT EXISTS failures(path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime INTEGER NOT NULL,"
    " error TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS folders(path TEXT PRIMARY KEY);" /* the folders indexed, for relative paths */
    "INSERT OR IGNORE INTO meta VALUES('generation', '0');"
    "INSERT OR IGNORE INTO meta VALUES('format', 'clipc-index-1');";

int index_open(const char *path, bool writer, clip_index **out, clipc_error *err) {
    *out = NULL;
    clip_index *ix = calloc(1, sizeof *ix);
    if (!ix) return clipc_fail(err, "out of memory");
    ix->lock_fd = -1;
    snprintf(ix->path, sizeof ix->path, "%s", path);
    if (!writer && access(path, R_OK) != 0) {
        free(ix);
        return clipc_fail(err, "%s: no such index (create it with clipc index --db %s DIR)", path, path);
    }
    if (writer) {
        /* flock is independent of SQLite's own (fcntl) locks: it keeps a
         * second indexer out for the whole run, not just one transaction. */
        char lock_path[4200];
        snprintf(lock_path, sizeof lock_path, "%s.lock", path);
        ix->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (ix->lock_fd < 0) {
            int e = errno;
            free(ix);
            return clipc_fail(err, "%s: %s", lock_path, strerror(e));
        }
        if (flock(ix->lock_fd, LOCK_EX | LOCK_NB) != 0) {
            close(ix->lock_fd);
            free(ix);
            return clipc_fail(err, "%s: index is locked: another clipc index is writing it", path);
        }
    }
    if (writer) { /* a killed run's half-written matrix cache (DB.matrix.tmp.PID) */
        char pattern[4200];
        glob_t g;
        snprintf(pattern, sizeof pattern, "%s.matrix.tmp.*", path);
        if (glob(pattern, GLOB_NOSORT, NULL, &g) == 0)
            for (size_t i = 0; i < g.gl_pathc; i++) remove(g.gl_pathv[i]);
        globfree(&g);
    }
    int flags = writer ? SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE : SQLITE_OPEN_READONLY;
    if (sqlite3_open_v2(path, &ix->db, flags, NULL) != SQLITE_OK) {
        clipc_fail(err, "%s: cannot open: %s", path, ix->db ? sqlite3_errmsg(ix->db) : "out of memory");
        index_close(ix);
        return -1;
    }
    sqlite3_busy_timeout(ix->db, 5000);
    int rc = 0;
    if (writer) rc = exec(ix, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", err);
    if (rc == 0 && writer) rc = exec(ix, SCHEMA, err);
    if (rc == 0 && !writer) { /* is it ours? */
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(ix->db, "SELECT value FROM meta WHERE key = 'format'", -1, &st, NULL) != SQLITE_OK ||
            sqlite3_step(st) != SQLITE_ROW)
            rc = clipc_fail(err, "%s: not a clipc index", path);
        sqlite3_finalize(st);
    }
    if (rc) {
        index_close(ix);
        return -1;
    }
    *out = ix;
    return 0;
}

void index_close(clip_index *ix) {
    if (!ix) return;
    if (ix->db) sqlite3_close(ix->db);
    if (ix->lock_fd >= 0) close(ix->lock_fd);
    free(ix);
}

const char *index_db_path(const clip_index *ix) { return ix->path; }

/* FNV-1a over the config and the parameter bits. */
void model_fingerprint(const clipc_model *m, char out[64]) {
    uint64_t h = 0xcbf29ce484222325ULL;
    const clipc_config *c = &m->cfg;
    const unsigned char *bytes = (const unsigned char *)m->params;
    for (size_t i = 0; i < m->table.total * sizeof(float); i++) h = (h ^ bytes[i]) * 0x100000001b3ULL;
    snprintf(out, 64, "%s-w%d-d%d-e%d-%016llx", c->vision_tower == CLIPC_VIT ? "vit" : "rn", c->vision_width,
             c->text_width, c->embed_dim, (unsigned long long)h);
}

static int meta_get(clip_index *ix, const char *key, char *value, size_t cap) {
    sqlite3_stmt *st;
    int found = 0;
    if (sqlite3_prepare_v2(ix->db, "SELECT value FROM meta WHERE key = ?", -1, &st, NULL) != SQLITE_OK) return 0;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        snprintf(value, cap, "%s", (const char *)sqlite3_column_text(st, 0));
        found = 1;
    }
    sqlite3_finalize(st);
    return found;
}

static int meta_set(clip_index *ix, const char *key, const char *value, clipc_error *err) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(ix->db, "INSERT OR REPLACE INTO meta VALUES(?, ?)", -1, &st, NULL) != SQLITE_OK)
        return sql_fail(ix, err, "meta");
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : sql_fail(ix, err, "meta");
    sqlite3_finalize(st);
    return rc;
}

int index_set_model_path(clip_index *ix, const char *path, clipc_error *err) {
    if (exec(ix, "BEGIN", err)) return -1;
    if (meta_set(ix, "model_path", path, err)) {
        exec(ix, "ROLLBACK", NULL);
        return -1;
    }
    return exec(ix, "COMMIT", err);
}

int index_model_path(clip_index *ix, char *out, size_t cap) { return meta_get(ix, "model_path", out, cap) ? 0 : -1; }

int index_model_info(clip_index *ix, char fingerprint[64], int *dim) {
    char d[32];
    if (!meta_get(ix, "model", fingerprint, 64) || !meta_get(ix, "embed_dim", d, sizeof d)) return -1;
    *dim = atoi(d);
    return 0;
}

int index_check_model(clip_index *ix, const clipc_model *m, clipc_error *err) {
    char want[64], have[64];
    int dim;
    model_fingerprint(m, want);
    if (index_model_info(ix, have, &dim) != 0) {
        if (ix->lock_fd < 0) return clipc_fail(err, "%s: the index is empty (run clipc index first)", ix->path);
        char d[32];
        snprintf(d, sizeof d, "%d", m->cfg.embed_dim);
        if (exec(ix, "BEGIN", err)) return -1;
        if (meta_set(ix, "model", want, err) || meta_set(ix, "embed_dim", d, err)) {
            exec(ix, "ROLLBACK", NULL);
            return -1;
        }
        return exec(ix, "COMMIT", err);
    }
    if (dim != m->cfg.embed_dim)
        return clipc_fail(err, "%s holds %d-d embeddings, but this model makes %d-d ones: use the model it was built with",
                          ix->path, dim, m->cfg.embed_dim);
    if (strcmp(have, want))
        return clipc_fail(err, "%s was built with another model (%s; this one is %s): use that model, or a new --db",
                          ix->path, have, want);
    return 0;
}

int64_t index_count(clip_index *ix) {
    sqlite3_stmt *st;
    int64_t n = -1;
    if (sqlite3_prepare_v2(ix->db, "SELECT COUNT(*) FROM images", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

char *index_path_of(clip_index *ix, int64_t id, clipc_error *err) {
    sqlite3_stmt *st;
    char *path = NULL;
    if (sqlite3_prepare_v2(ix->db, "SELECT path FROM images WHERE id = ?", -1, &st, NULL) != SQLITE_OK) {
        sql_fail(ix, err, "lookup");
        return NULL;
    }
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) == SQLITE_ROW) path = strdup((const char *)sqlite3_column_text(st, 0));
    else clipc_fail(err, "no image with id %lld in the index", (long long)id);
    sqlite3_finalize(st);
    return path;
}

/* Bytes as valid UTF-8: each byte of an invalid sequence becomes U+FFFD. */
static char *valid_utf8(const char *s) {
    size_t n = strlen(s), m = 0;
    char *out = malloc(3 * n + 1);
    if (!out) return NULL;
    for (size_t i = 0; i < n;) {
        const unsigned char *p = (const unsigned char *)s + i;
        int len = p[0] < 0x80 ? 1 : p[0] >= 0xC2 && p[0] <= 0xDF ? 2 : p[0] >= 0xE0 && p[0] <= 0xEF ? 3 : p[0] >= 0xF0 && p[0] <= 0xF4 ? 4 : 0;
        bool ok = len > 0 && i + (size_t)len <= n;
        for (int j = 1; ok && j < len; j++) ok = (p[j] & 0xC0) == 0x80;
        if (ok && len == 3) ok = !(p[0] == 0xE0 && p[1] < 0xA0) && !(p[0] == 0xED && p[1] > 0x9F); /* overlong, surrogate */
        if (ok && len == 4) ok = !(p[0] == 0xF0 && p[1] < 0x90) && !(p[0] == 0xF4 && p[1] > 0x8F);
        if (ok) {
            memcpy(out + m, p, (size_t)len);
            m += (size_t)len, i += (size_t)len;
        } else {
            memcpy(out + m, "\xef\xbf\xbd", 3);
            m += 3, i++;
        }
    }
    out[m] = 0;
    return out;
}

char *index_display_path(clip_index *ix, const char *path) {
    /* the longest indexed folder holding the path: FOLDER_NAME/rest; else the file name */
    sqlite3_stmt *st;
    size_t best = 0;
    const char *shown = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    char *root_name = NULL;
    if (sqlite3_prepare_v2(ix->db, "SELECT path FROM folders", -1, &st, NULL) == SQLITE_OK) {
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *root = (const char *)sqlite3_column_text(st, 0);
            size_t len = root ? strlen(root) : 0;
            if (len <= best || strncmp(path, root, len) || path[len] != '/') continue;
            const char *base = root + len;
            while (base > root && base[-1] != '/') base--;
            char *name = strdup(*base ? base : "/");
            if (!name) continue;
            free(root_name);
            root_name = name, best = len, shown = path + len + 1;
        }
        sqlite3_finalize(st);
    }
    size_t need = (root_name ? strlen(root_name) + 1 : 0) + strlen(shown) + 1;
    char *joined = malloc(need);
    if (joined) snprintf(joined, need, "%s%s%s", root_name ? root_name : "", root_name ? "/" : "", shown);
    free(root_name);
    char *out = joined ? valid_utf8(joined) : NULL;
    free(joined);
    return out;
}

/* ---- the update ------------------------------------------------------------------ */

typedef struct file_entry {
    char *path;
    int64_t size, mtime; /* mtime in nanoseconds */
} file_entry;

typedef struct file_list {
    file_entry *items;
    size_t n, cap;
} file_list;

static int list_push(file_list *l, const char *path, int64_t size, int64_t mtime) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 1024;
        file_entry *items = realloc(l->items, cap * sizeof *items);
        if (!items) return -1;
        l->items = items, l->cap = cap;
    }
    char *copy = strdup(path);
    if (!copy) return -1;
    l->items[l->n++] = (file_entry){copy, size, mtime};
    return 0;
}

static void list_free(file_list *l) {
    for (size_t i = 0; i < l->n; i++) free(l->items[i].path);
    free(l->items);
    memset(l, 0, sizeof *l);
}

/* Depth-first walk; symbolic links are not followed (no cycles). */
static int walk(const char *dir, file_list *out, int depth, clipc_error *err) {
    if (depth > 64) return 0;
    DIR *d = opendir(dir);
    if (!d) return depth == 0 ? clipc_fail(err, "%s: %s", dir, strerror(errno)) : 0;
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue; /* hidden files, . and .. */
        char path[4096];
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path) continue;
        struct stat st;
        if (lstat(path, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) rc = walk(path, out, depth + 1, err);
        else if (S_ISREG(st.st_mode) && is_image_file_name(e->d_name))
            rc = list_push(out, path, st.st_size, (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec)
                     ? clipc_fail(err, "out of memory")
                     : 0;
    }
    closedir(d);
    return rc;
}

static int compare_entries(const void *a, const void *b) {
    return strcmp(((const file_entry *)a)->path, ((const file_entry *)b)->path);
}

/* What the database knows, sorted by path for lookups. */
static int load_known(clip_index *ix, const char *table, file_list *out, clipc_error *err) {
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT path, size, mtime FROM %s", table);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(ix->db, sql, -1, &st, NULL) != SQLITE_OK) return sql_fail(ix, err, "read");
    int rc = 0, s;
    while (rc == 0 && (s = sqlite3_step(st)) == SQLITE_ROW)
        if (list_push(out, (const char *)sqlite3_column_text(st, 0), sqlite3_column_int64(st, 1),
                      sqlite3_column_int64(st, 2)))
            rc = clipc_fail(err, "out of memory");
    if (rc == 0 && s != SQLITE_DONE) rc = sql_fail(ix, err, "read");
    sqlite3_finalize(st);
    if (rc == 0 && out->n) qsort(out->items, out->n, sizeof *out->items, compare_entries);
    return rc;
}

static const file_entry *find(const file_list *l, const char *path) {
    file_entry key = {(char *)path, 0, 0};
    return l->n ? bsearch(&key, l->items, l->n, sizeof *l->items, compare_entries) : NULL;
}

static int bump_generation(clip_index *ix, clipc_error *err) {
    return exec(ix, "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'", err);
}

/* Decoding runs one batch ahead on a worker thread. */
enum { INDEX_BATCH = 32 };

typedef struct batch {
    float *pixels;
    int count;
    int first;              /* index into the work list */
    int ok[INDEX_BATCH];
    clipc_error errs[INDEX_BATCH];
} batch;

typedef struct decoder {
    const file_list *work;
    int R;
    const clipc_model *m; /* whose preprocessing the images get */
    batch slots[2];
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int produced, consumed, total_batches;
    bool stop;
} decoder;

static void decode_batch(decoder *dc, batch *b, int k) {
    b->first = k * INDEX_BATCH;
    b->count = (int)dc->work->n - b->first < INDEX_BATCH ? (int)dc->work->n - b->first : INDEX_BATCH;
    size_t image = (size_t)3 * dc->R * dc->R;
    /* the decoder thread's own OpenMP team: with a small model, decoding
     * is the bottleneck and gets every core the encoder leaves idle */
    #pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < b->count; i++)
        b->ok[i] = clipc_model_preprocess_file(dc->m, dc->work->items[b->first + i].path, b->pixels + i * image,
                                               &b->errs[i]) == 0;
}

static void *decoder_run(void *arg) {
    decoder *dc = arg;
    pthread_mutex_lock(&dc->lock);
    while (!dc->stop && dc->produced < dc->total_batches) {
        if (dc->produced - dc->consumed >= 2) { /* both slots full */
            pthread_cond_wait(&dc->changed, &dc->lock);
            continue;
        }
        int k = dc->produced;
        pthread_mutex_unlock(&dc->lock);
        decode_batch(dc, &dc->slots[k % 2], k);
        pthread_mutex_lock(&dc->lock);
        dc->produced++;
        pthread_cond_broadcast(&dc->changed);
    }
    pthread_mutex_unlock(&dc->lock);
    return NULL;
}

static int store_batch(clip_index *ix, const file_list *work, const batch *b, const float *features, int E,
                       const index_callbacks *cb, index_stats *stats, const file_list *known, clipc_error *err) {
    sqlite3_stmt *put = NULL, *fail = NULL, *unfail = NULL;
    if (exec(ix, "BEGIN IMMEDIATE", err)) return -1;
    int rc = 0;
    if (sqlite3_prepare_v2(ix->db,
                           "INSERT INTO images(path, size, mtime, embedding) VALUES(?, ?, ?, ?) "
                           "ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime = excluded.mtime, "
                           "embedding = excluded.embedding",
                           -1, &put, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(ix->db, "INSERT OR REPLACE INTO failures VALUES(?, ?, ?, ?)", -1, &fail, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(ix->db, "DELETE FROM failures WHERE path = ?", -1, &unfail, NULL) != SQLITE_OK)
        rc = sql_fail(ix, err, "prepare");
    for (int i = 0; i < b->count && rc == 0; i++) {
        const file_entry *f = &work->items[b->first + i];
        if (b->ok[i]) {
            sqlite3_bind_text(put, 1, f->path, -1, SQLITE_STATIC);
            sqlite3_bind_int64(put, 2, f->size);
            sqlite3_bind_int64(put, 3, f->mtime);
            sqlite3_bind_blob(put, 4, features + (size_t)i * E, E * (int)sizeof(float), SQLITE_STATIC);
            if (sqlite3_step(put) != SQLITE_DONE) rc = sql_fail(ix, err, "insert");
            sqlite3_reset(put);
            sqlite3_bind_text(unfail, 1, f->path, -1, SQLITE_STATIC);
            if (rc == 0 && sqlite3_step(unfail) != SQLITE_DONE) rc = sql_fail(ix, err, "insert");
            sqlite3_reset(unfail);
            if (find(known, f->path)) stats->updated++;
            else stats->added++;
        } else {
            sqlite3_bind_text(fail, 1, f->path, -1, SQLITE_STATIC);
            sqlite3_bind_int64(fail, 2, f->size);
            sqlite3_bind_int64(fail, 3, f->mtime);
            sqlite3_bind_text(fail, 4, b->errs[i].message, -1, SQLITE_STATIC);
            if (sqlite3_step(fail) != SQLITE_DONE) rc = sql_fail(ix, err, "insert");
            sqlite3_reset(fail);
            stats->failed++;
            if (cb && cb->skipped) cb->skipped(cb->ctx, f->path, b->errs[i].message);
        }
    }
    sqlite3_finalize(put), sqlite3_finalize(fail), sqlite3_finalize(unfail);
    if (rc == 0) rc = bump_generation(ix, err);
    if (rc == 0) rc = exec(ix, "COMMIT", err);
    else exec(ix, "ROLLBACK", NULL);
    return rc;
}

/* True when path lies under one of the (absolute, normalised) folders. */
static bool under(const char *path, char *const *dirs, int n) {
    for (int i = 0; i < n; i++) {
        size_t len = strlen(dirs[i]);
        if (!strncmp(path, dirs[i], len) && (path[len] == '/' || (len == 1 && dirs[i][0] == '/'))) return true;
    }
    return false;
}

int index_update(clip_index *ix, clipc_model *m, const char *const *dirs, int n_dirs, const index_callbacks *cb,
                 index_stats *stats, clipc_error *err) {
    memset(stats, 0, sizeof *stats);
    if (ix->lock_fd < 0) return clipc_fail(err, "the index was opened read-only");
    if (index_check_model(ix, m, err)) return -1;
    char **roots = calloc((size_t)n_dirs, sizeof *roots);
    file_list found = {0}, known = {0}, failed = {0}, work = {0};
    int rc = roots ? 0 : clipc_fail(err, "out of memory");
    for (int i = 0; i < n_dirs && rc == 0; i++) {
        roots[i] = realpath(dirs[i], NULL);
        struct stat st;
        if (!roots[i]) rc = clipc_fail(err, "%s: %s", dirs[i], strerror(errno));
        else if (stat(roots[i], &st) || !S_ISDIR(st.st_mode)) rc = clipc_fail(err, "%s: not a folder", dirs[i]);
    }
    for (int i = 0; i < n_dirs && rc == 0; i++) { /* remembered, so a path can be shown relative to its folder */
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(ix->db, "INSERT OR IGNORE INTO folders VALUES(?)", -1, &st, NULL) != SQLITE_OK) {
            rc = sql_fail(ix, err, "folders");
            break;
        }
        sqlite3_bind_text(st, 1, roots[i], -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE) rc = sql_fail(ix, err, "folders");
        sqlite3_finalize(st);
    }
    for (int i = 0; i < n_dirs && rc == 0; i++) rc = walk(roots[i], &found, 0, err);
    if (rc == 0 && found.n) qsort(found.items, found.n, sizeof *found.items, compare_entries);
    if (rc == 0) rc = load_known(ix, "images", &known, err);
    if (rc == 0) rc = load_known(ix, "failures", &failed, err);
    /* 1. drop what is gone from the folders (renames: the old path goes, the new one is added) */
    if (rc == 0) {
        sqlite3_stmt *del = NULL, *del_fail = NULL;
        rc = exec(ix, "BEGIN IMMEDIATE", err);
        if (rc == 0 && (sqlite3_prepare_v2(ix->db, "DELETE FROM images WHERE path = ?", -1, &del, NULL) != SQLITE_OK ||
                        sqlite3_prepare_v2(ix->db, "DELETE FROM failures WHERE path = ?", -1, &del_fail, NULL) !=
                            SQLITE_OK))
            rc = sql_fail(ix, err, "prepare");
        for (int pass = 0; pass < 2 && rc == 0; pass++) {
            const file_list *l = pass ? &failed : &known;
            sqlite3_stmt *st = pass ? del_fail : del;
            for (size_t i = 0; i < l->n && rc == 0; i++) {
                if (!under(l->items[i].path, roots, n_dirs) || find(&found, l->items[i].path)) continue;
                sqlite3_bind_text(st, 1, l->items[i].path, -1, SQLITE_STATIC);
                if (sqlite3_step(st) != SQLITE_DONE) rc = sql_fail(ix, err, "delete");
                sqlite3_reset(st);
                if (!pass) stats->removed++;
            }
        }
        sqlite3_finalize(del), sqlite3_finalize(del_fail);
        if (rc == 0 && stats->removed) rc = bump_generation(ix, err);
        if (rc == 0) rc = exec(ix, "COMMIT", err);
        else exec(ix, "ROLLBACK", NULL);
    }
    /* 2. what needs embedding: new, or changed in size or mtime */
    for (size_t i = 0; i < found.n && rc == 0; i++) {
        const file_entry *f = &found.items[i], *k = find(&known, f->path), *x = find(&failed, f->path);
        stats->seen++;
        if (k && k->size == f->size && k->mtime == f->mtime) stats->unchanged++;
        else if (!k && x && x->size == f->size && x->mtime == f->mtime) stats->failed_before++;
        else if (list_push(&work, f->path, f->size, f->mtime)) rc = clipc_fail(err, "out of memory");
    }
    /* 3. embed and commit batch by batch, decoding the next batch meanwhile */
    if (rc == 0 && work.n) {
        const clipc_config *c = clipc_model_config(m);
        int E = c->embed_dim;
        decoder dc = {.work = &work, .m = m, .R = c->image_resolution,
                      .total_batches = (int)((work.n + INDEX_BATCH - 1) / INDEX_BATCH)};
        float *features = malloc((size_t)INDEX_BATCH * E * sizeof *features), *packed = NULL;
        size_t image = (size_t)3 * dc.R * dc.R;
        for (int s = 0; s < 2; s++) dc.slots[s].pixels = malloc(INDEX_BATCH * image * sizeof(float));
        packed = malloc(INDEX_BATCH * image * sizeof(float));
        if (!features || !packed || !dc.slots[0].pixels || !dc.slots[1].pixels) rc = clipc_fail(err, "out of memory");
        pthread_mutex_init(&dc.lock, NULL);
        pthread_cond_init(&dc.changed, NULL);
        bool started = rc == 0 && pthread_create(&dc.thread, NULL, decoder_run, &dc) == 0;
        if (rc == 0 && !started) rc = clipc_fail(err, "cannot start the decoding thread");
        long done = 0;
        for (int k = 0; k < dc.total_batches && rc == 0; k++) {
            pthread_mutex_lock(&dc.lock);
            while (dc.produced <= k) pthread_cond_wait(&dc.changed, &dc.lock);
            pthread_mutex_unlock(&dc.lock);
            batch *b = &dc.slots[k % 2];
            /* the decodable images, packed together for the model */
            int n_ok = 0;
            for (int i = 0; i < b->count; i++)
                if (b->ok[i]) memcpy(packed + n_ok++ * image, b->pixels + i * image, image * sizeof(float));
            float *packed_features = malloc((size_t)(n_ok ? n_ok : 1) * E * sizeof *packed_features);
            if (!packed_features) rc = clipc_fail(err, "out of memory");
            if (rc == 0 && n_ok) rc = clipc_encode_image(m, packed, n_ok, packed_features, err);
            if (rc == 0) {
                clipc_normalize_rows(packed_features, n_ok, E);
                for (int i = 0, j = 0; i < b->count; i++)
                    if (b->ok[i]) memcpy(features + (size_t)i * E, packed_features + (size_t)j++ * E, E * sizeof(float));
                rc = store_batch(ix, &work, b, features, E, cb, stats, &known, err);
            }
            free(packed_features);
            pthread_mutex_lock(&dc.lock);
            dc.consumed++;
            pthread_cond_broadcast(&dc.changed);
            pthread_mutex_unlock(&dc.lock);
            done += b->count;
            if (rc == 0 && cb && cb->progress) cb->progress(cb->ctx, done, (long)work.n);
        }
        if (started) {
            pthread_mutex_lock(&dc.lock);
            dc.stop = true;
            pthread_cond_broadcast(&dc.changed);
            pthread_mutex_unlock(&dc.lock);
            pthread_join(dc.thread, NULL);
        }
        pthread_mutex_destroy(&dc.lock);
        pthread_cond_destroy(&dc.changed);
        free(features), free(packed), free(dc.slots[0].pixels), free(dc.slots[1].pixels);
    }
    for (int i = 0; i < n_dirs && roots; i++) free(roots[i]);
    free(roots);
    list_free(&found), list_free(&known), list_free(&failed), list_free(&work);
    if (rc == 0) { /* refresh the matrix for the searches to come */
        index_matrix mx;
        if (index_matrix_load(ix, &mx, err) == 0) index_matrix_free(&mx);
        else rc = -1;
    }
    return rc;
}

/* ---- the matrix file ------------------------------------------------------------- */

/* DB.matrix: a 64-byte header (magic, generation, count, dim), the ids
 * (int64), then the rows (float32), both 64-byte aligned. */
typedef struct matrix_header {
    char magic[8];
    uint64_t generation;
    int64_t count;
    int32_t dim, pad;
    char reserved[32];
} matrix_header;

static const char MATRIX_MAGIC[8] = "CLIPCMX1";

static size_t ids_bytes(int64_t count) { return ((size_t)count * 8 + 63) / 64 * 64; }

static uint64_t current_generation(clip_index *ix) {
    char g[32];
    return meta_get(ix, "generation", g, sizeof g) ? strtoull(g, NULL, 10) : 0;
}

static int map_matrix(const char *path, uint64_t generation, int dim, index_matrix *out) {
    size_t len;
    int fd = open_regular_file(path, &len, NULL);
    if (fd < 0) return -1;
    void *map = len >= sizeof(matrix_header) ? mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
    close(fd);
    if (map == MAP_FAILED) return -1;
    const matrix_header *h = map;
    size_t want = sizeof *h + ids_bytes(h->count) + (size_t)h->count * (size_t)h->dim * sizeof(float);
    if (memcmp(h->magic, MATRIX_MAGIC, 8) || h->generation != generation || h->dim != dim || h->count < 0 ||
        len != want) {
        munmap(map, len);
        return -1;
    }
    *out = (index_matrix){h->count, h->dim, (const int64_t *)((char *)map + sizeof *h),
                          (const float *)((char *)map + sizeof *h + ids_bytes(h->count)), map, len, true, generation};
    return 0;
}

uint64_t index_generation(clip_index *ix) { return current_generation(ix); }

int index_matrix_load(clip_index *ix, index_matrix *out, clipc_error *err) {
    memset(out, 0, sizeof *out);
    char fp[64], path[4200];
    int dim;
    if (index_model_info(ix, fp, &dim)) return clipc_fail(err, "%s: the index is empty (run clipc index first)", ix->path);
    snprintf(path, sizeof path, "%s.matrix", ix->path);
    /* one read transaction: the generation and the rows agree */
    if (exec(ix, "BEGIN", err)) return -1;
    uint64_t generation = current_generation(ix);
    if (map_matrix(path, generation, dim, out) == 0) {
        exec(ix, "COMMIT", NULL);
        return 0;
    }
    int64_t count = index_count(ix);
    size_t len = sizeof(matrix_header) + ids_bytes(count) + (size_t)count * dim * sizeof(float);
    char *block = calloc(1, len);
    sqlite3_stmt *st = NULL;
    int rc = block ? 0 : clipc_fail(err, "out of memory for %lld embeddings", (long long)count);
    if (rc == 0 && sqlite3_prepare_v2(ix->db, "SELECT id, embedding FROM images ORDER BY id", -1, &st, NULL) != SQLITE_OK)
        rc = sql_fail(ix, err, "read");
    matrix_header *h = (matrix_header *)block;
    int64_t *ids = block ? (int64_t *)(block + sizeof *h) : NULL;
    float *rows = block ? (float *)(block + sizeof *h + ids_bytes(count)) : NULL;
    int64_t n = 0;
    while (rc == 0 && sqlite3_step(st) == SQLITE_ROW && n < count) {
        if (sqlite3_column_bytes(st, 1) != dim * (int)sizeof(float)) {
            rc = clipc_fail(err, "%s: image %lld has an embedding of the wrong size", ix->path,
                            (long long)sqlite3_column_int64(st, 0));
            break;
        }
        ids[n] = sqlite3_column_int64(st, 0);
        memcpy(rows + (size_t)n * dim, sqlite3_column_blob(st, 1), (size_t)dim * sizeof(float));
        n++;
    }
    sqlite3_finalize(st);
    exec(ix, "COMMIT", NULL);
    if (rc == 0 && n != count) rc = clipc_fail(err, "%s: the index changed while it was read", ix->path);
    if (rc) {
        free(block);
        return -1;
    }
    memcpy(h->magic, MATRIX_MAGIC, 8);
    h->generation = generation, h->count = count, h->dim = dim;
    /* saved for the next search; a read-only place just means no cache */
    write_file_atomic(path, block, len, NULL);
    *out = (index_matrix){count, dim, ids, rows, block, len, false, generation};
    return 0;
}

void index_matrix_free(index_matrix *mx) {
    if (mx->map) {
        if (mx->mapped) munmap(mx->map, mx->map_len);
        else free(mx->map);
    }
    memset(mx, 0, sizeof *mx);
}
