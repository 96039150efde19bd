/* server.c — `clipc serve`: a JSON search API and one web page over an
 * index, with libmicrohttpd.
 *
 *   GET  /                         the search page
 *   GET  /api/search?q=TEXT&k=K    text (or "a" + "b" - "c") search (also /search)
 *   POST /api/search?k=K           body: an image file; similar images
 *   GET  /api/similar?id=ID&k=K    images like indexed image ID
 *   GET  /api/thumb/ID             a 160x160 PNG thumbnail of image ID
 *
 * Only indexed images are ever read, looked up by id, so no request can
 * name a path, and responses show paths relative to the indexed folders
 * (index_display_path), as valid UTF-8. Requests are bounded: the query
 * length, k, and the upload size, and an upload is decoded under the image
 * limits. Bad requests get a 4xx and {"error": "..."}.
 *
 * Connections: MHD polls them with epoll (no FD_SETSIZE ceiling) from a
 * small pool of threads, up to max_connections at once, each dropped after
 * CONNECTION_TIMEOUT idle seconds; so a thousand slow clients hold sockets,
 * not the server. The model, the database and the matrix are used under
 * one lock; decoding an upload and drawing a thumbnail, the slow parts of a
 * request, happen outside it. */
#include "server.h"

#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern const char clipc_page_html[], clipc_page_html_end[];

enum { MAX_QUERY = 1000, THUMB = 160, THREADS = 4, CONNECTION_TIMEOUT = 10 };

struct server {
    const server_options *o;
    pthread_mutex_t lock; /* the model, the index, the matrix, q, tok and hits */
    clip_index *ix;
    index_matrix mx;
    float *q;
    clipc_tokenizer *tok; /* built once: building it costs ~30 ms, a query's encoding less */
    search_hit *hits;
};

/* A request body being received (POST), bounded by o->max_upload. */
typedef struct upload {
    unsigned char *data;
    size_t len;
    bool too_large;
} upload;

static enum MHD_Result send_bytes(struct MHD_Connection *c, unsigned status, const char *type, const void *data,
                                  size_t len, bool copy) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)data, copy ? MHD_RESPMEM_MUST_COPY : MHD_RESPMEM_MUST_FREE);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, cJSON *j) {
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!text) return MHD_NO;
    return send_bytes(c, status, "application/json", text, strlen(text), false);
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *message) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "error", message);
    return send_json(c, status, j);
}

/* The matrix follows the index: reloaded when a writer has committed. */
static int refresh(server *s, clipc_error *err) {
    if (s->mx.count && s->mx.generation == index_generation(s->ix)) return 0;
    index_matrix fresh;
    if (index_matrix_load(s->ix, &fresh, err)) return -1;
    index_matrix_free(&s->mx);
    s->mx = fresh;
    return 0;
}

/* k from the query string: 1..max_k, default 10. */
static int parse_k(struct MHD_Connection *c, const server_options *o, int *k) {
    const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "k");
    *k = 10;
    if (!v) return 0;
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v || *end || x < 1 || x > o->max_k) return -1;
    *k = (int)x;
    return 0;
}

static enum MHD_Result send_hits(server *s, struct MHD_Connection *c, int got) {
    cJSON *j = cJSON_CreateObject(), *results = cJSON_AddArrayToObject(j, "results");
    clipc_error err;
    for (int i = 0; i < got; i++) {
        int64_t id = s->mx.ids[s->hits[i].row];
        char *path = index_path_of(s->ix, id, &err);
        if (!path) continue; /* dropped by a writer since the matrix was built */
        char *shown = index_display_path(s->ix, path);
        free(path);
        if (!shown) continue;
        const char *slash = strrchr(shown, '/');
        cJSON *r = cJSON_CreateObject();
        cJSON_AddNumberToObject(r, "rank", i + 1);
        cJSON_AddNumberToObject(r, "id", (double)id);
        cJSON_AddNumberToObject(r, "score", s->hits[i].score);
        cJSON_AddStringToObject(r, "name", slash ? slash + 1 : shown);
        cJSON_AddStringToObject(r, "path", shown);
        cJSON_AddItemToArray(results, r);
        free(shown);
    }
    return send_json(c, MHD_HTTP_OK, j);
}

static enum MHD_Result search(server *s, struct MHD_Connection *c, const float *q, int k) {
    int got = search_exact(s->mx.rows, s->mx.count, s->mx.dim, q, k, s->hits);
    if (got < 0) return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
    return send_hits(s, c, got);
}

static int64_t row_of(const index_matrix *mx, int64_t id) {
    int64_t lo = 0, hi = mx->count - 1; /* ids ascend (ORDER BY id) */
    while (lo <= hi) {
        int64_t mid = (lo + hi) / 2;
        if (mx->ids[mid] == id) return mid;
        if (mx->ids[mid] < id) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

static int parse_id(const char *v, int64_t *id) {
    if (!v || !*v) return -1;
    char *end;
    long long x = strtoll(v, &end, 10);
    if (*end || x < 0) return -1;
    *id = x;
    return 0;
}

static enum MHD_Result thumbnail(server *s, struct MHD_Connection *c, const char *id_text) {
    int64_t id;
    clipc_error err;
    if (parse_id(id_text, &id)) return send_error(c, MHD_HTTP_BAD_REQUEST, "the thumbnail id must be a number");
    pthread_mutex_lock(&s->lock);
    char *path = index_path_of(s->ix, id, &err);
    pthread_mutex_unlock(&s->lock);
    if (!path) return send_error(c, MHD_HTTP_NOT_FOUND, "no indexed image with that id");
    unsigned char *rgb = malloc((size_t)THUMB * THUMB * 3), *png = NULL;
    size_t png_len = 0;
    int rc = rgb ? image_file_rgb(path, THUMB, rgb, &err) : -1;
    if (rc == 0) rc = image_encode_png(rgb, THUMB, THUMB, &png, &png_len, &err);
    free(rgb), free(path);
    if (rc) return send_error(c, MHD_HTTP_NOT_FOUND, "the image can no longer be read");
    return send_bytes(c, MHD_HTTP_OK, "image/png", png, png_len, false);
}

/* A search, under the lock: by an indexed image (similar), by an uploaded
 * image's pixels, or by the text of q. */
static enum MHD_Result answer(server *s, struct MHD_Connection *c, bool similar, int k, const float *pixels) {
    clipc_error err;
    if (refresh(s, &err)) return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, err.message);
    if (similar) {
        int64_t id, row;
        if (parse_id(MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "id"), &id))
            return send_error(c, MHD_HTTP_BAD_REQUEST, "id must be a number");
        if ((row = row_of(&s->mx, id)) < 0) return send_error(c, MHD_HTTP_NOT_FOUND, "no indexed image with that id");
        return search(s, c, s->mx.rows + (size_t)row * s->mx.dim, k);
    }
    if (pixels) {
        if (clipc_encode_image(s->o->model, pixels, 1, s->q, &err))
            return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, err.message);
        clipc_normalize_rows(s->q, 1, clipc_model_config(s->o->model)->embed_dim);
        return search(s, c, s->q, k);
    }
    const char *q = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "q");
    if (!q || !*q) return send_error(c, MHD_HTTP_BAD_REQUEST, "missing q (the text to search for)");
    if (strlen(q) > MAX_QUERY) return send_error(c, MHD_HTTP_BAD_REQUEST, "q is longer than 1000 bytes");
    if (query_vector(s->o->model, s->tok, q, s->q, &err)) return send_error(c, MHD_HTTP_BAD_REQUEST, err.message);
    return search(s, c, s->q, k);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *upload_data, size_t *upload_size, void **state) {
    (void)version;
    server *s = cls;
    const server_options *o = s->o;
    bool post = !strcmp(method, "POST");
    if (post) { /* collect the body first, within the bound */
        upload *u = *state;
        if (!u) {
            if (!(u = calloc(1, sizeof *u))) return MHD_NO;
            *state = u;
            return MHD_YES;
        }
        if (*upload_size) {
            if (u->len + *upload_size > o->max_upload) u->too_large = true;
            else {
                unsigned char *d = realloc(u->data, u->len + *upload_size);
                if (!d) return MHD_NO;
                memcpy(d + u->len, upload_data, *upload_size);
                u->data = d, u->len += *upload_size;
            }
            *upload_size = 0;
            return MHD_YES;
        }
    } else if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
        return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and POST are served");
    }
    if (o->log) o->log(o->ctx, method, url);
    clipc_error err;
    if (!strcmp(url, "/") && !post)
        return send_bytes(c, MHD_HTTP_OK, "text/html; charset=utf-8", clipc_page_html,
                          (size_t)(clipc_page_html_end - clipc_page_html), true);
    if (!strncmp(url, "/api/thumb/", 11) && !post) return thumbnail(s, c, url + 11);
    /* /search and /similar are the same endpoints without the /api prefix */
    bool is_search = !strcmp(url, "/api/search") || !strcmp(url, "/search");
    bool is_similar = !strcmp(url, "/api/similar") || !strcmp(url, "/similar");
    if (!is_search && !is_similar) return send_error(c, MHD_HTTP_NOT_FOUND, "no such page");
    int k;
    if (parse_k(c, o, &k)) {
        char msg[64];
        snprintf(msg, sizeof msg, "k must be a number from 1 to %d", o->max_k);
        return send_error(c, MHD_HTTP_BAD_REQUEST, msg);
    }
    if (is_similar && post) return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "use GET /api/similar?id=ID");
    /* an upload is decoded and preprocessed before taking the lock: a slow or huge image delays only itself */
    float *pixels = NULL;
    if (post) {
        upload *u = *state;
        if (u->too_large) return send_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "the image is larger than the upload limit");
        if (!u->len) return send_error(c, MHD_HTTP_BAD_REQUEST, "POST an image file (JPEG, PNG, TIFF or WebP) as the body");
        const clipc_config *cfg = clipc_model_config(o->model);
        pixels = malloc((size_t)3 * cfg->image_resolution * cfg->image_resolution * sizeof *pixels);
        if (!pixels) return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
        if (clipc_model_preprocess_memory(o->model, u->data, u->len, "upload", pixels, &err)) {
            free(pixels);
            return send_error(c, MHD_HTTP_BAD_REQUEST, err.message);
        }
    }
    pthread_mutex_lock(&s->lock);
    enum MHD_Result r = answer(s, c, is_similar, k, pixels);
    pthread_mutex_unlock(&s->lock);
    free(pixels);
    return r;
}

static void finished(void *cls, struct MHD_Connection *c, void **state, enum MHD_RequestTerminationCode toe) {
    (void)cls, (void)c, (void)toe;
    upload *u = *state;
    if (u) free(u->data);
    free(u);
    *state = NULL;
}

server *server_open(const server_options *o, clipc_error *err) {
    server *s = calloc(1, sizeof *s);
    if (!s) {
        clipc_fail(err, "out of memory");
        return NULL;
    }
    s->o = o;
    pthread_mutex_init(&s->lock, NULL);
    int rc = index_open(o->db, false, &s->ix, err);
    if (rc == 0) rc = index_check_model(s->ix, o->model, err);
    if (rc == 0) rc = index_matrix_load(s->ix, &s->mx, err);
    s->q = malloc((size_t)clipc_model_config(o->model)->embed_dim * sizeof *s->q);
    s->hits = malloc((size_t)o->max_k * sizeof *s->hits);
    if (rc == 0 && (!s->q || !s->hits)) rc = clipc_fail(err, "out of memory");
    if (rc == 0 && !(s->tok = clipc_model_tokenizer(o->model, err))) rc = -1;
    if (rc) {
        server_close(s);
        return NULL;
    }
    return s;
}

void server_close(server *s) {
    if (!s) return;
    index_matrix_free(&s->mx);
    free(s->q), free(s->hits);
    clipc_tokenizer_free(s->tok);
    if (s->ix) index_close(s->ix);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* The settings every daemon shares: the handler, the per-connection memory and idle timeout. */
#define DAEMON_OPTIONS(s)                                                                                          \
    NULL, NULL, handle, (s), MHD_OPTION_NOTIFY_COMPLETED, finished, NULL, MHD_OPTION_CONNECTION_MEMORY_LIMIT,     \
        (size_t)256 * 1024, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)CONNECTION_TIMEOUT

struct MHD_Daemon *server_start_unlistened(server *s) {
    return MHD_start_daemon(MHD_USE_NO_LISTEN_SOCKET, 0, DAEMON_OPTIONS(s), MHD_OPTION_END);
}

int server_run(const server_options *o, clipc_error *err) {
    server *s = server_open(o, err);
    if (!s) return -1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
    inet_pton(AF_INET, o->bind ? o->bind : "127.0.0.1", &addr.sin_addr);
    /* epoll from a pool of threads, a bounded number of connections, idle ones dropped */
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, (uint16_t)o->port, DAEMON_OPTIONS(s), MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&addr, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)THREADS, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)(o->max_connections > 0 ? o->max_connections : 2000), MHD_OPTION_END);
    int rc = d ? 0 : clipc_fail(err, "cannot listen on %s:%d (in use?)", o->bind ? o->bind : "127.0.0.1", o->port);
    if (rc == 0 && o->ready) o->ready(o->ctx, o->port);
    while (rc == 0 && !*o->stop) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (d) MHD_stop_daemon(d);
    server_close(s);
    return rc;
}
