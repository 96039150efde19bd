/* dist.c — data-parallel training over MPI (OpenMPI from Debian), reduced
 * to the few collectives the trainer needs. Built without MPI (or run
 * without mpirun) every call is the identity of a one-process world, so the
 * trainer has a single code path.
 *
 * MPI is used from the main thread only (MPI_THREAD_FUNNELED): the data
 * loader's thread and OpenMP's workers never call it. Errors in MPI itself
 * abort the job (MPI_ERRORS_ARE_FATAL), which mpirun reports per rank. */
#include "train.h"

#include <stdlib.h>
#include <string.h>

#ifdef CLIPC_MPI
#include <mpi.h>
#endif

int dist_init(int *argc, char ***argv, dist *d, clipc_error *err) {
    d->rank = 0, d->size = 1, d->active = false;
#ifdef CLIPC_MPI
    /* Only under a launcher: a plain `clipc train` never starts MPI. */
    if (!getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMI_SIZE") && !getenv("PMIX_RANK")) return 0;
    int provided;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return clipc_fail(err, "MPI_Init failed");
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->size);
    d->active = true;
#else
    (void)argc, (void)argv, (void)err;
#endif
    return 0;
}

void dist_finalize(dist *d) {
#ifdef CLIPC_MPI
    if (d->active) MPI_Finalize();
#endif
    d->active = false;
}

void dist_abort(const dist *d, int code) {
#ifdef CLIPC_MPI
    if (d->active && d->size > 1) MPI_Abort(MPI_COMM_WORLD, code);
#endif
    (void)d, (void)code;
}

void dist_allgather(const dist *d, const float *local, int count, float *all) {
    if (d->size == 1) {
        if (all != local) memcpy(all, local, (size_t)count * sizeof *all);
        return;
    }
#ifdef CLIPC_MPI
    MPI_Allgather(local, count, MPI_FLOAT, all, count, MPI_FLOAT, MPI_COMM_WORLD);
#endif
}

void dist_reduce_scatter(const dist *d, const float *all, int count, float *local) {
    if (d->size == 1) {
        if (all != local) memcpy(local, all, (size_t)count * sizeof *local);
        return;
    }
#ifdef CLIPC_MPI
    MPI_Reduce_scatter_block(all, local, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
#endif
}

void dist_sum_doubles(const dist *d, double *x, int count) {
#ifdef CLIPC_MPI
    if (d->size > 1) MPI_Allreduce(MPI_IN_PLACE, x, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
#endif
    (void)d, (void)x, (void)count;
}

int dist_max_int(const dist *d, int x) {
#ifdef CLIPC_MPI
    if (d->size > 1) MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
#endif
    (void)d;
    return x;
}

void dist_broadcast(const dist *d, float *x, size_t count) {
#ifdef CLIPC_MPI
    for (size_t at = 0; d->size > 1 && at < count; at += 1 << 24) {
        size_t n = count - at < (1u << 24) ? count - at : (1u << 24);
        MPI_Bcast(x + at, (int)n, MPI_FLOAT, 0, MPI_COMM_WORLD);
    }
#endif
    (void)d, (void)x, (void)count;
}

/* Gradient buckets: non-blocking sums of ~1M floats each, started as soon
 * as a tower's gradients are final and completed together. */
enum { BUCKET_FLOATS = 1 << 20, MAX_BUCKETS = 1024 };

struct dist_pending {
#ifdef CLIPC_MPI
    MPI_Request req[MAX_BUCKETS];
#endif
    int n;
};

dist_pending *dist_pending_new(void) { return calloc(1, sizeof(dist_pending)); }

void dist_sum_floats_start(const dist *d, float *x, size_t count, dist_pending *p) {
#ifdef CLIPC_MPI
    for (size_t at = 0; d->size > 1 && at < count; at += BUCKET_FLOATS) {
        size_t n = count - at < BUCKET_FLOATS ? count - at : BUCKET_FLOATS;
        if (p->n == MAX_BUCKETS) { /* more buckets than slots: finish the old ones first */
            MPI_Waitall(p->n, p->req, MPI_STATUSES_IGNORE);
            p->n = 0;
        }
        MPI_Iallreduce(MPI_IN_PLACE, x + at, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &p->req[p->n++]);
    }
#endif
    (void)d, (void)x, (void)count, (void)p;
}

void dist_sum_floats_finish(const dist *d, dist_pending *p) {
#ifdef CLIPC_MPI
    if (d->size > 1 && p->n) MPI_Waitall(p->n, p->req, MPI_STATUSES_IGNORE);
#endif
    (void)d;
    p->n = 0;
}

void dist_pending_free(dist_pending *p) { free(p); }
