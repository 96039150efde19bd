/* spm.h — the SentencePiece library seen from C (spm_shim.cpp), and the
 * SigLIP / Gemma tokenizers built on it (spm.c). */
#ifndef CLIPC_SPM_H
#define CLIPC_SPM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct spm_model spm_model;

/* A serialized SentencePiece ModelProto (the bytes of a .model file); NULL
 * with the reason in msg when the library refuses it. */
spm_model *spm_load(const unsigned char *data, size_t len, char *msg, size_t cap);
void spm_free(spm_model *m);
/* The piece ids of text (normalised and segmented by the model's own rules). */
int spm_encode(const spm_model *m, const char *text, size_t len, int32_t **ids, int *n, char *msg, size_t cap);
int spm_piece_count(const spm_model *m);
/* The id of a piece, or -1 when the model has no such piece. */
int spm_piece_id(const spm_model *m, const char *piece);
/* The piece of an id into out; -1 for an id outside the vocabulary. */
int spm_piece(const spm_model *m, int id, char *out, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
