/* hub.h — published checkpoints by name (hub/pull.c): the table, the local
 * cache ($XDG_CACHE_HOME/clipc), and verified, resumable downloads. */
#ifndef CLIPC_HUB_H
#define CLIPC_HUB_H

#include "../internal.h"

#define HUB_FILES 5 /* the most files a checkpoint comes as (SigLIP: weights, config, tokenizer and its config, image processor) */

typedef struct hub_model {
    const char *name;      /* "ViT-B-32", "openai/clip-vit-base-patch32", "ViT-B-32:laion2b_s34b_b79k" */
    const char *source;    /* "OpenAI", "Hugging Face", "OpenCLIP" */
    const char *urls[HUB_FILES];   /* the weights, then the files beside them (configs, tokenizer); NULL ends */
    const char *sha256[HUB_FILES]; /* published checksums; NULL: the server's X-Linked-Etag, if it sends one */
} hub_model;

const hub_model *hub_models(int *count);
const hub_model *hub_find(const char *name);

/* override (--cache), else $XDG_CACHE_HOME/clipc, else ~/.cache/clipc. */
int hub_cache_dir(const char *override, char *out, size_t cap, clipc_error *err);
/* Where file `file` (0: weights, 1: config) of m lives in the cache. */
int hub_path(const char *cache, const hub_model *m, int file, char *out, size_t cap);

/* Progress: bytes so far of the file `what`, and its size (0: unknown). */
typedef void (*hub_progress_fn)(void *ctx, const char *what, long long done, long long total);
/* Downloads m's files into the cache (files already there are kept) and
 * writes the weights' path; *unverified counts files that had no published
 * checksum. Returns 0, or -1 with err. */
int hub_pull(const hub_model *m, const char *cache, hub_progress_fn progress, void *ctx, char *path_out, size_t cap,
             int *unverified, clipc_error *err);
/* A pulled model's weights for -m NAME: 0 and the path; 1 when name is not
 * in the table; -1 (err) when it is but has not been pulled. The cache is
 * $CLIPC_CACHE, else the default. */
int hub_resolve(const char *name, char *path_out, size_t cap, clipc_error *err);

#endif
