/* fuzz_http.c — libFuzzer target for `clipc serve`'s request handling
 * (src/server/server.c behind libmicrohttpd), in process: each input is the
 * bytes a client sends on one connection — request lines, headers,
 * pipelined requests, bodies (uploaded images), garbage — handed to the
 * server's own daemon over a socketpair, with no network socket. The
 * server must answer, refuse or drop it, never crash, leak, hit undefined
 * behaviour or name a path outside the index; every response it writes
 * must be HTTP.
 *
 * The service is real: a small CLIP model from tests/data and an index of
 * four images (one in a subfolder, one with a Latin-1 file name) built at
 * start-up in /tmp. Run from the source tree (or set CLIPC_ROOT). Seeds:
 * tests/fuzz/corpus/http. FUZZ_HTTP_SHOW=1 prints what the server answered
 * (e.g. `FUZZ_HTTP_SHOW=1 build-fuzz/fuzz_http tests/fuzz/corpus/http/search`). */
#include "../../src/internal.h"
#include "../../src/server/server.h"

#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct MHD_Daemon *daemon_;
static server *service;
static server_options options;
static volatile sig_atomic_t never;
static char base[64];

static void die(const char *what, const clipc_error *err) {
    fprintf(stderr, "fuzz_http: %s: %s\n", what, err ? err->message : strerror(errno));
    abort();
}

/* A w x h PNG of one colour at dir/name. */
static void write_png(const char *dir, const char *name, int w, int h, unsigned char shade) {
    unsigned char *rgb = malloc((size_t)w * h * 3), *png;
    size_t len;
    clipc_error err;
    for (int i = 0; i < w * h * 3; i++) rgb[i] = (unsigned char)(shade + i % 7 * 20);
    if (image_encode_png(rgb, w, h, &png, &len, &err)) die("png", &err);
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (write_file_atomic(path, png, len, &err)) die(path, &err);
    free(rgb), free(png);
}

/* At exit: the daemon stopped, the service closed, the scratch folder removed. */
static void teardown(void) {
    if (daemon_) MHD_stop_daemon(daemon_);
    server_close(service);
    clipc_model_free(options.model);
    free((char *)options.db);
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf %s", base);
    if (system(cmd)) return;
}

static void setup(void) {
    const char *root = getenv("CLIPC_ROOT") ? getenv("CLIPC_ROOT") : ".";
    char photos[128], sub[160], db[128], model[512];
    snprintf(base, sizeof base, "/tmp/clipc_fuzz_http_%d", (int)getpid());
    snprintf(photos, sizeof photos, "%s/photos", base);
    snprintf(sub, sizeof sub, "%s/beach", photos);
    snprintf(db, sizeof db, "%s/photos.db", base);
    snprintf(model, sizeof model, "%s/tests/data/pytorch/model.safetensors", root);
    mkdir(base, 0700), mkdir(photos, 0700), mkdir(sub, 0700);
    write_png(photos, "red.png", 40, 30, 200);
    write_png(photos, "caf\xe9.png", 30, 40, 10);
    write_png(sub, "1.png", 64, 64, 90);
    write_png(sub, "2.png", 8, 100, 140);
    clipc_error err;
    clipc_model *m = clipc_model_load(model, &err);
    if (!m) die(model, &err);
    clip_index *ix;
    index_stats stats;
    const char *dirs[] = {photos};
    if (index_open(db, true, &ix, &err) || index_check_model(ix, m, &err) ||
        index_update(ix, m, dirs, 1, NULL, &stats, &err))
        die("index", &err);
    index_close(ix);
    options = (server_options){.db = strdup(db), .model = m, .max_k = 100, .max_upload = 1 << 20, .stop = &never};
    if (!(service = server_open(&options, &err))) die("server", &err);
    if (!(daemon_ = server_start_unlistened(service))) die("daemon", NULL);
    atexit(teardown);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!daemon_) setup();
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds)) die("socketpair", NULL);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(40000)};
    peer.sin_addr.s_addr = htonl(0x7f000001);
    if (MHD_add_connection(daemon_, fds[1], (struct sockaddr *)&peer, sizeof peer) != MHD_YES) {
        close(fds[0]);
        return 0;
    }
    /* send everything (the server reads as we write), then half-close: the request is all there is */
    size_t sent = 0;
    char reply[65536];
    size_t got = 0;
    bool closed = false, half_closed = false;
    for (int round = 0; round < 2000 && !closed; round++) {
        if (sent < size) {
            ssize_t w = write(fds[0], data + sent, size - sent);
            if (w > 0) sent += (size_t)w;
            else if (w < 0 && errno != EAGAIN) sent = size;
        } else if (!half_closed) {
            shutdown(fds[0], SHUT_WR);
            half_closed = true;
        }
        MHD_run(daemon_);
        for (;;) {
            ssize_t r = read(fds[0], got < sizeof reply ? reply + got : reply, got < sizeof reply ? sizeof reply - got : sizeof reply);
            if (r > 0) got = got < sizeof reply ? got + (size_t)r : got;
            else {
                if (r == 0) closed = true;
                break;
            }
        }
        if (half_closed && round > 200 && !got) break; /* held for its timeout: a slow client */
    }
    close(fds[0]);
    MHD_run(daemon_); /* the server sees the close and frees the connection */
    if (getenv("FUZZ_HTTP_SHOW")) fprintf(stderr, "--- %zu bytes answered:\n%.*s\n", got, (int)(got < 600 ? got : 600), reply);
    if (got && (got < 5 || memcmp(reply, "HTTP/", 5))) abort(); /* whatever was written is HTTP */
    if (got && memmem(reply, got, base, strlen(base))) abort(); /* no path of the machine leaks */
    return 0;
}
