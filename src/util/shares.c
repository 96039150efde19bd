/* shares.c — running one batch as several independent shares, one per
 * thread. Encoding (model/clip.c) and training (train/trainer.c) both cut
 * a batch into contiguous shares and run each through the whole model on
 * its own thread, so the threads never wait for each other inside a pass. */
#include "../internal.h"

#include <omp.h>

int run_shares(int shares, int (*work)(void *ctx, int s, clipc_error *err), void *ctx, clipc_error *err) {
    if (shares <= 1) return work(ctx, 0, err); /* its layers use every thread */
    int failed = 0;
#pragma omp parallel for num_threads(shares)
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
