// spm_shim.cpp — Debian's libsentencepiece (C++) behind the few C functions
// spm.c needs. SentencePiece's own normaliser (its precompiled NFKC
// charsmap) and its unigram / BPE segmentation are what SigLIP's and Gemma's
// tokenizers are defined by, so clipc calls the library rather than
// re-deriving them; everything around it (canonicalisation, special tokens,
// padding) is spm.c's.
#include <sentencepiece_processor.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "spm.h"

struct spm_model {
    sentencepiece::SentencePieceProcessor sp;
};

static int fail(char *msg, size_t cap, const char *what, const char *detail) {
    if (msg && cap) snprintf(msg, cap, "%s%s%s", what, detail && *detail ? ": " : "", detail ? detail : "");
    return -1;
}

extern "C" spm_model *spm_load(const unsigned char *data, size_t len, char *msg, size_t cap) {
    spm_model *m = new (std::nothrow) spm_model;
    if (!m) {
        fail(msg, cap, "out of memory", nullptr);
        return nullptr;
    }
    try {
        auto status = m->sp.LoadFromSerializedProto(std::string(reinterpret_cast<const char *>(data), len));
        if (!status.ok()) {
            fail(msg, cap, "not a SentencePiece model", status.message());
            delete m;
            return nullptr;
        }
    } catch (...) {
        fail(msg, cap, "not a SentencePiece model", "the library refused it");
        delete m;
        return nullptr;
    }
    return m;
}

extern "C" void spm_free(spm_model *m) { delete m; }

extern "C" int spm_encode(const spm_model *m, const char *text, size_t len, int32_t **ids, int *n, char *msg,
                          size_t cap) {
    *ids = nullptr;
    *n = 0;
    try {
        std::vector<int> out;
        auto status = m->sp.Encode(std::string(text, len), &out);
        if (!status.ok()) return fail(msg, cap, "SentencePiece could not encode the text", status.message());
        if (out.size() > (size_t)INT32_MAX / sizeof(int32_t)) return fail(msg, cap, "text too long", nullptr);
        *ids = static_cast<int32_t *>(malloc((out.size() ? out.size() : 1) * sizeof(int32_t)));
        if (!*ids) return fail(msg, cap, "out of memory", nullptr);
        for (size_t i = 0; i < out.size(); i++) (*ids)[i] = out[i];
        *n = (int)out.size();
    } catch (...) {
        free(*ids);
        *ids = nullptr;
        return fail(msg, cap, "out of memory tokenizing", nullptr);
    }
    return 0;
}

extern "C" int spm_piece_count(const spm_model *m) { return m->sp.GetPieceSize(); }

extern "C" int spm_piece_id(const spm_model *m, const char *piece) {
    try {
        int id = m->sp.PieceToId(piece);
        // PieceToId answers unk_id for a piece it does not have
        return id == m->sp.unk_id() && strcmp(piece, m->sp.IdToPiece(id).c_str()) ? -1 : id;
    } catch (...) {
        return -1;
    }
}

extern "C" int spm_piece(const spm_model *m, int id, char *out, size_t cap) {
    if (id < 0 || id >= m->sp.GetPieceSize() || !cap) return -1;
    try {
        snprintf(out, cap, "%s", m->sp.IdToPiece(id).c_str());
    } catch (...) {
        return -1;
    }
    return 0;
}
