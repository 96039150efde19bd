/* shares.c — running one batch as several independent shares, one per
 * thread. Encoding (model/clip.c) and training (train/trainer.c) both cut
 * a batch into contiguous shares and run each through the whole model on
 * its own thread, so the threads never wait for each other inside a pass. */
#include "../internal.h"

#include <dirent.h>
#include <stdatomic.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int run_shares(int shares, int (*work)(void *ctx, int s, clipc_error *err), void *ctx, clipc_error *err) {
    if (shares <= 1) return work(ctx, 0, err); /* its layers use every thread */
    int failed = 0, threads = omp_get_max_threads();
    threads = shares < threads ? shares : threads;
    /* More shares than threads are pulled one at a time, so a thread that
     * the kernel gives less CPU simply takes fewer of them. */
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int s = 0; s < shares; s++) {
        clipc_error mine;
        omp_set_num_threads(1); /* this share's OpenMP regions (and BLAS) stay on its thread */
        if (work(ctx, s, &mine) != 0) {
#pragma omp critical(clipc_run_shares)
            if (!failed) failed = 1, *err = mine;
        }
    }
    return failed ? -1 : 0;
}

/* The number of this process's threads the kernel has running now. */
static int own_running(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    int running = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[64], buf[256];
        snprintf(path, sizeof path, "/proc/self/task/%.20s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = '\0';
        const char *close_paren = strrchr(buf, ')'); /* "tid (name) S ..." */
        if (close_paren && close_paren[1] == ' ' && close_paren[2] == 'R') running++;
    }
    closedir(d);
    return running;
}

/* One reading of how many threads have a core. */
static int available_now(int nominal) {
    FILE *f = fopen("/proc/loadavg", "r"); /* "0.52 0.58 0.59 3/412 12345": 3 runnable now */
    if (!f) return nominal;
    int running = 0, total = 0;
    int ok = fscanf(f, "%*f %*f %*f %d/%d", &running, &total) == 2;
    fclose(f);
    int own = ok ? own_running() : -1;
    if (own < 0) return nominal;
    int others = running - (own > 0 ? own : 1);
    int avail = nominal - (others > 0 ? others : 0);
    return avail < 1 ? 1 : avail;
}

int threads_available(void) {
    int nominal = omp_get_max_threads();
    if (nominal <= 1) return nominal;
    /* Short-lived tasks (daemons, the shell) are runnable now and then (in
     * ~15% of readings on an idle VM here), a competing job nearly always:
     * a moving average of the readings tells them apart, reacting after
     * two readings and forgetting after a few. Per mille, shared by every
     * caller of the process. */
    static _Atomic int contention = 0;
    int avail = available_now(nominal);
    int seen = avail < nominal ? 1000 : 0;
    int c = (7 * atomic_load(&contention) + 3 * seen) / 10;
    atomic_store(&contention, c);
    return c > 500 ? avail : nominal;
}
