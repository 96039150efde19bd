/* loader.c — prepares the next step's batch on a background thread while
 * the current step computes: decoding/resizing images and tokenizing
 * captions never stalls the model. Two slots; the batch of step s lives in
 * slot s % 2. A batch is a pure function of (seed, step) (see data.c). */
#include "train.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct loader {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    pair_source src;
    clipc_tokenizer *tok;
    int N, R, ctx;
    int shard_first, shard_count; /* this rank's pairs of each step's N */
    uint64_t seed;
    long next, end;          /* the next step to produce; produce until end */
    long ready[2];           /* the step held by each slot, or -1 */
    bool busy[2];            /* the consumer is using the slot */
    bool stop;
    float *pixels[2];
    int32_t *tokens[2];
    int *perm;
    long perm_epoch;
    clipc_error err;
    bool failed;
    long skipped;            /* unreadable image files (each counted once) */
    unsigned char *unreadable; /* src.count flags: this file could not be read */
    char first_skip[512];
};

/* Sample idx of the source, the step's pair number i, into slot position
 * pos. A CSV image that cannot be read is replaced by the next sample (and
 * counted); training goes on. */
static int fill_one(loader *l, int slot, long step, int pos, int i, int idx) {
    float *px = l->pixels[slot] + (size_t)pos * 3 * l->R * l->R;
    char caption[256];
    const char *text = caption;
    if (l->src.fm) {
        fmnist_caption(l->src.fm->labels[idx], l->seed, step, i, caption, sizeof caption);
        if (fmnist_pixels(l->src.fm, idx, l->R, px, &l->err)) return -1;
    } else {
        clipc_error e;
        int tries = 0;
        while (augmented_pixels(l->src.csv->paths[idx], l->R, l->seed, step, i, px, &e)) {
            pthread_mutex_lock(&l->lock);
            if (!l->unreadable[idx]) { /* a file, not each time a step draws it */
                l->unreadable[idx] = 1;
                if (l->skipped++ == 0) snprintf(l->first_skip, sizeof l->first_skip, "%s", e.message);
            }
            pthread_mutex_unlock(&l->lock);
            idx = (idx + 1) % l->src.count;
            if (++tries == l->src.count) return clipc_fail(&l->err, "no readable image in the data (%s)", e.message);
        }
        text = l->src.csv->captions[idx];
    }
    return clipc_tokenize(l->tok, text, l->ctx, 1, l->tokens[slot] + (size_t)pos * l->ctx, &l->err);
}

/* The step's pairs shard_first .. shard_first + shard_count - 1 of N: with
 * several ranks, each loads its own disjoint slice of the global batch. */
static int fill(loader *l, int slot, long step) {
    for (int pos = 0; pos < l->shard_count; pos++) {
        int i = l->shard_first + pos;
        long g = step * l->N + i, epoch = g / l->src.count;
        int idx = data_order_index(l->seed, epoch, l->src.count, (int)(g % l->src.count), l->perm, &l->perm_epoch);
        if (fill_one(l, slot, step, pos, i, idx)) return -1;
    }
    return 0;
}

long loader_skipped(loader *l, char *first, size_t cap) {
    pthread_mutex_lock(&l->lock);
    long n = l->skipped;
    snprintf(first, cap, "%s", l->first_skip);
    pthread_mutex_unlock(&l->lock);
    return n;
}

static void *run(void *arg) {
    loader *l = arg;
    pthread_mutex_lock(&l->lock);
    while (!l->stop && l->next < l->end) {
        long step = l->next;
        int slot = (int)(step % 2);
        if (l->busy[slot] || l->ready[slot] >= 0) { /* wait for the consumer to free it */
            pthread_cond_wait(&l->changed, &l->lock);
            continue;
        }
        pthread_mutex_unlock(&l->lock);
        int rc = fill(l, slot, step);
        pthread_mutex_lock(&l->lock);
        if (rc) {
            l->failed = true;
            pthread_cond_broadcast(&l->changed);
            break;
        }
        l->ready[slot] = step;
        l->next++;
        pthread_cond_broadcast(&l->changed);
    }
    pthread_mutex_unlock(&l->lock);
    return NULL;
}

loader *loader_start(pair_source src, int batch_pairs, int shard_first, int shard_count, int resolution, int context,
                     uint64_t seed, long first, long end, clipc_error *err) {
    loader *l = calloc(1, sizeof *l);
    if (!l) {
        clipc_fail(err, "out of memory");
        return NULL;
    }
    l->src = src, l->N = batch_pairs, l->R = resolution, l->ctx = context, l->seed = seed;
    l->shard_first = shard_first, l->shard_count = shard_count;
    l->next = first, l->end = end, l->ready[0] = l->ready[1] = -1, l->perm_epoch = -1;
    l->tok = clipc_tokenizer_new(err);
    l->perm = malloc((size_t)src.count * sizeof *l->perm);
    l->unreadable = calloc((size_t)src.count, 1);
    for (int s = 0; s < 2; s++) {
        l->pixels[s] = malloc((size_t)shard_count * 3 * resolution * resolution * sizeof(float));
        l->tokens[s] = malloc((size_t)shard_count * context * sizeof(int32_t));
    }
    if (!l->tok || !l->perm || !l->unreadable || !l->pixels[0] || !l->pixels[1] || !l->tokens[0] || !l->tokens[1]) {
        if (l->tok) clipc_fail(err, "out of memory for the data loader");
        loader_stop(l);
        return NULL;
    }
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->changed, NULL);
    if (pthread_create(&l->thread, NULL, run, l) != 0) {
        clipc_fail(err, "cannot start the data loader thread");
        pthread_mutex_destroy(&l->lock);
        pthread_cond_destroy(&l->changed);
        l->thread = 0;
        loader_stop(l);
        return NULL;
    }
    return l;
}

int loader_get(loader *l, long step, const float **pixels, const int32_t **tokens, clipc_error *err) {
    int slot = (int)(step % 2);
    pthread_mutex_lock(&l->lock);
    while (l->ready[slot] != step && !l->failed) pthread_cond_wait(&l->changed, &l->lock);
    if (l->ready[slot] != step) {
        pthread_mutex_unlock(&l->lock);
        if (err) *err = l->err;
        return -1;
    }
    l->busy[slot] = true;
    pthread_mutex_unlock(&l->lock);
    *pixels = l->pixels[slot];
    *tokens = l->tokens[slot];
    return 0;
}

void loader_release(loader *l, long step) {
    int slot = (int)(step % 2);
    pthread_mutex_lock(&l->lock);
    l->busy[slot] = false;
    l->ready[slot] = -1;
    pthread_cond_broadcast(&l->changed);
    pthread_mutex_unlock(&l->lock);
}

void loader_stop(loader *l) {
    if (!l) return;
    if (l->thread) {
        pthread_mutex_lock(&l->lock);
        l->stop = true;
        pthread_cond_broadcast(&l->changed);
        pthread_mutex_unlock(&l->lock);
        pthread_join(l->thread, NULL);
        pthread_mutex_destroy(&l->lock);
        pthread_cond_destroy(&l->changed);
    }
    clipc_tokenizer_free(l->tok);
    free(l->perm);
    free(l->unreadable);
    for (int s = 0; s < 2; s++) free(l->pixels[s]), free(l->tokens[s]);
    free(l);
}
