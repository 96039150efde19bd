// faiss_shim.cpp — the few FAISS calls clipc makes, behind a C interface
// (index.h: ann_*). Debian's libfaiss-dev ships FAISS's C API headers but
// not their compiled code, so this file is the bridge: the only C++ in
// clipc. Every exception becomes an error message.
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIVF.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>

#include <cstdio>
#include <exception>

extern "C" {
#include "index.h"
}

struct ann_index {
    faiss::Index *index;
};

int ann_build(const float *rows, int64_t n, int dim, const char *factory, ann_index **out, clipc_error *err) {
    *out = nullptr;
    try {
        faiss::Index *index = faiss::index_factory(dim, factory, faiss::METRIC_INNER_PRODUCT);
        if (!index->is_trained) index->train(n, rows);
        index->add(n, rows);
        *out = new ann_index{index};
        return 0;
    } catch (const std::exception &e) {
        return clipc_fail(err, "FAISS (%s): %s", factory, e.what());
    }
}

int ann_save(const ann_index *a, const char *path, clipc_error *err) {
    try {
        faiss::write_index(a->index, path);
        return 0;
    } catch (const std::exception &e) {
        return clipc_fail(err, "FAISS: cannot write %s: %s", path, e.what());
    }
}

int ann_load(const char *path, ann_index **out, clipc_error *err) {
    *out = nullptr;
    try {
        *out = new ann_index{faiss::read_index(path)};
        return 0;
    } catch (const std::exception &e) {
        return clipc_fail(err, "FAISS: cannot read %s: %s", path, e.what());
    }
}

int ann_search(const ann_index *a, const float *q, int k, int64_t *rows, float *scores, clipc_error *err) {
    try {
        a->index->search(1, q, k, scores, reinterpret_cast<faiss::Index::idx_t *>(rows));
        return 0;
    } catch (const std::exception &e) {
        return clipc_fail(err, "FAISS search: %s", e.what());
    }
}

void ann_set_effort(ann_index *a, int effort) {
    if (auto *hnsw = dynamic_cast<faiss::IndexHNSW *>(a->index)) hnsw->hnsw.efSearch = effort;
    if (auto *ivf = dynamic_cast<faiss::IndexIVF *>(a->index)) ivf->nprobe = effort;
}

void ann_free(ann_index *a) {
    if (!a) return;
    delete a->index;
    delete a;
}
