/* server.h — the HTTP search service behind `clipc serve` (server.c). */
#ifndef CLIPC_SERVER_H
#define CLIPC_SERVER_H

#include "../index/index.h"

#include <arpa/inet.h>
#include <signal.h>

typedef struct server_options {
    const char *db;          /* the index */
    clipc_model *model;      /* the model it was built with */
    const char *bind;        /* address to listen on (default 127.0.0.1) */
    int port;
    int max_k;               /* the largest k a request may ask for */
    size_t max_upload;       /* the largest image a POST may carry */
    int max_connections;     /* open connections at once (more wait in the listen queue) */
    volatile sig_atomic_t *stop; /* serve until *stop becomes non-zero */
    void (*ready)(void *ctx, int port);                          /* listening */
    void (*log)(void *ctx, const char *method, const char *url); /* each request (may be NULL) */
    void *ctx;
} server_options;

/* The service's state — the index, its matrix, the model's tokenizer —
 * for o, which must outlive it; NULL with err when the index cannot be
 * opened or was built by another model. */
typedef struct server server;
server *server_open(const server_options *o, clipc_error *err);
void server_close(server *s);
/* A daemon serving s that listens on no socket: the caller hands it
 * connections (MHD_add_connection) and drives it (MHD_run), as the HTTP
 * fuzz target does. Stop it with MHD_stop_daemon before server_close. */
struct MHD_Daemon;
struct MHD_Daemon *server_start_unlistened(server *s);

/* Serves until *o->stop; returns 0, or -1 with err (the index, the model,
 * or the port). */
int server_run(const server_options *o, clipc_error *err);

#endif
