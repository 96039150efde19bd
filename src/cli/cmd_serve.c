/* cmd_serve.c — `clipc serve`: the search page and JSON API over an index. */
#include "cli.h"
#include "../index/index.h"
#include "../server/server.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static volatile sig_atomic_t stop_serving;
static void on_stop(int sig) { stop_serving = sig; }

static void on_ready(void *ctx, int port) {
    const char *bind = ctx;
    fprintf(stderr, "serving on http://%s:%d/  (Ctrl-C stops)\n", bind, port);
}

int cmd_serve(int argc, char **argv) {
    const char *db = NULL, *model_path = NULL, *bind = "127.0.0.1";
    long port = 8080, max_k = 100, max_upload_mb = 20, max_connections = 2000;
    for (int i = 0; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--db") && v) db = argv[++i];
        else if (!strcmp(argv[i], "-m") && v) model_path = argv[++i];
        else if (!strcmp(argv[i], "--bind") && v) bind = argv[++i];
        else if (!strcmp(argv[i], "--port")) {
            if (!cli_int("--port", v, 1, 65535, &port)) return 1;
            i++;
        } else if (!strcmp(argv[i], "--max-k")) {
            if (!cli_int("--max-k", v, 1, 10000, &max_k)) return 1;
            i++;
        } else if (!strcmp(argv[i], "--max-upload-mb")) {
            if (!cli_int("--max-upload-mb", v, 1, 1000, &max_upload_mb)) return 1;
            i++;
        } else if (!strcmp(argv[i], "--max-connections")) {
            if (!cli_int("--max-connections", v, 1, 100000, &max_connections)) return 1;
            i++;
        } else if (!strcmp(argv[i], "--help")) {
            printf("usage: clipc serve --db FILE [-m MODEL] [--port 8080] [--bind 127.0.0.1] [--max-k 100]\n"
                   "                   [--max-upload-mb 20] [--max-connections 2000]\n"
                   "  A search page at http://BIND:PORT/ and a JSON API:\n"
                   "    GET  /api/search?q=TEXT&k=K     text or \"a\" + \"b\" - \"c\" queries (also /search)\n"
                   "    POST /api/search?k=K            an image as the body: similar images\n"
                   "    GET  /api/similar?id=ID&k=K     images like indexed image ID\n"
                   "    GET  /api/thumb/ID              a PNG thumbnail of image ID\n"
                   "  Only indexed images are served, and paths are shown relative to the indexed folders.\n"
                   "  Listens on loopback unless --bind says otherwise. At most --max-connections are open at\n"
                   "  once (the open-file limit is raised to allow them); one idle for 10 s is closed.\n");
            return 0;
        } else return cli_unexpected("serve", cmd_serve, argv[i]);
    }
    if (!db) return cli_error("serve: needs --db FILE");
    char recorded[4096];
    clipc_error err;
    clip_index *ix;
    if (!model_path && index_open(db, false, &ix, &err) == 0) { /* the model `clipc index -m` recorded */
        model_path = cli_index_model(ix, NULL, recorded, sizeof recorded);
        index_close(ix);
    }
    clipc_model *m = cli_load_model(model_path);
    if (!m) return 1;
    /* each connection is a file descriptor: raise the soft limit as far as the hard one allows */
    struct rlimit fds;
    if (getrlimit(RLIMIT_NOFILE, &fds) == 0) {
        rlim_t want = (rlim_t)max_connections + 64;
        if (fds.rlim_cur < want) {
            fds.rlim_cur = fds.rlim_max == RLIM_INFINITY || fds.rlim_max > want ? want : fds.rlim_max;
            setrlimit(RLIMIT_NOFILE, &fds);
        }
        if (getrlimit(RLIMIT_NOFILE, &fds) == 0 && fds.rlim_cur != RLIM_INFINITY && fds.rlim_cur < (rlim_t)max_connections + 64) {
            long fit = (long)fds.rlim_cur - 64 > 16 ? (long)fds.rlim_cur - 64 : 16;
            fprintf(stderr, "clipc: note: the open-file limit (%ld) allows %ld connections, not %ld\n", (long)fds.rlim_cur, fit,
                    max_connections);
            max_connections = fit;
        }
    }
    signal(SIGINT, on_stop);
    signal(SIGTERM, on_stop);
    signal(SIGPIPE, SIG_IGN); /* a client that hangs up is an error of that connection only */
    server_options o = {.db = db, .model = m, .bind = bind, .port = (int)port, .max_k = (int)max_k,
                        .max_upload = (size_t)max_upload_mb << 20, .max_connections = (int)max_connections,
                        .stop = &stop_serving, .ready = on_ready, .log = NULL, .ctx = (void *)bind};
    int rc = server_run(&o, &err) ? cli_error("%s", err.message) : 0;
    clipc_model_free(m);
    return rc;
}
