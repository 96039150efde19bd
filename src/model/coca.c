/* coca.c — CoCa's captioner (Yu et al. 2022, OpenCLIP's coca_model.py):
 * the multimodal decoder and the caption search that drives it.
 *
 * A caption is grown one token at a time. Each step feeds the newest token
 * through the text tower (causal: earlier positions never change, so their
 * keys and values are cached), then through the decoder, whose blocks are
 * OpenCLIP's MultimodalTransformer:
 *     y = y + attn(ln_1(y))                       causal self-attention (cached)
 *     y = y + mlp(ln_2(y))
 *     y = y + attn(q = ln_1(y), k = v = ln_1_kv(image tokens))   cross-attention
 *     y = y + mlp(ln_2(y))
 *     logits = ln_final(y) @ text_projection
 * The image tokens' keys and values are computed once per image. So a
 * caption costs one image pass plus one token step per token, where
 * OpenCLIP's generate() reruns both towers and the decoder on the whole
 * prefix at every step.
 *
 * The search reproduces OpenCLIP's generate(): sampling (top-k, top-p,
 * temperature; top-k 1 is greedy) and beam search in groups (transformers'
 * BeamSearchScorer, with OpenCLIP's choices: raw logits summed as the
 * score, length penalty 1, no early stopping). OpenCLIP adds no diversity
 * penalty between groups, so its groups are copies of each other and one
 * group of beams / groups beams computes the same captions. */
#include "tower.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void clipc_caption_defaults(clipc_caption_options *o) {
    *o = (clipc_caption_options){.beams = 6, .beam_groups = 3, .top_k = 1, .top_p = 0.0f, .temperature = 1.0f,
                                 .min_len = 5, .max_len = 30, .seed = 0};
}

/* The key/value caches of one decoding batch: rows sequences of up to len
 * positions through the text tower's and the decoder's self-attention, and
 * the cross-attention keys and values of each image's tokens. */
typedef struct caption_cache {
    int rows, len, D;
    float *text_kv;  /* [text_layers][rows][len][2D] */
    float *dec_kv;   /* [decoder_layers][rows][len][2D] */
    float *cross_kv; /* [decoder_layers][images][tokens][2D] */
    int images, tokens; /* image tokens per image: pool_queries - 1 */
    const int *image_of; /* row -> image */
} caption_cache;

/* One residual self-attention block for the newest position t of every row:
 * its key and value join the row's cache, its query attends over 0..t. */
static void block_step(const clipc_model *m, const block_offsets *b, float *x, int B, int t, float *kv, int len,
                       int heads, float *ws, float *tmp) {
    const float *P = m->params;
    int D = m->cfg.text_width, H = m->cfg.text_mlp_width;
    float *ln = tmp, *qkv = ln + (size_t)B * D, *att = qkv + (size_t)B * 3 * D, *hid = att + (size_t)B * D;
    float *scores = hid + (size_t)B * H;
    layernorm_forward(ln, x, P + b->ln1_w, P + b->ln1_b, B, D, m->cfg.text_ln_eps);
    model_gemm(m, qkv, 3 * D, ln, D, b->qkv_w, P + b->qkv_b, B, D, 3 * D, false, -1, ws);
#pragma omp parallel for if (B > 1)
    for (int r = 0; r < B; r++) {
        float *cache = kv + (size_t)r * len * 2 * D;
        memcpy(cache + (size_t)t * 2 * D, qkv + (size_t)r * 3 * D + D, (size_t)2 * D * sizeof *cache);
        attention_queries(att + (size_t)r * D, D, qkv + (size_t)r * 3 * D, 3 * D, cache, cache + D, 2 * D, 1, t + 1, D,
                          heads, scores + (size_t)r * len);
    }
    model_gemm(m, x, D, att, D, b->out_w, P + b->out_b, B, D, D, true, -1, ws);
    layernorm_forward(ln, x, P + b->ln2_w, P + b->ln2_b, B, D, m->cfg.text_ln_eps);
    model_mlp(m, x, ln, b->fc_w, P + b->fc_b, b->proj_w, P + b->proj_b, B, D, H, m->cfg.activation, hid, ws);
}

/* A cross-attention block: each row's query attends over its image's tokens. */
static void cross_step(const clipc_model *m, const block_offsets *b, float *y, int B, const caption_cache *c,
                       const float *cross_kv, float *ws, float *tmp) {
    const float *P = m->params;
    int D = c->D, H = m->cfg.text_mlp_width;
    float *ln = tmp, *q = ln + (size_t)B * D, *att = q + (size_t)B * D, *hid = att + (size_t)B * D;
    float *scores = hid + (size_t)B * H;
    layernorm_forward(ln, y, P + b->ln1_w, P + b->ln1_b, B, D, m->cfg.text_ln_eps);
    model_gemm(m, q, D, ln, D, b->qkv_w, P + b->qkv_b, B, D, D, false, -1, ws);
#pragma omp parallel for if (B > 1)
    for (int r = 0; r < B; r++) {
        const float *kv = cross_kv + (size_t)c->image_of[r] * c->tokens * 2 * D;
        attention_queries(att + (size_t)r * D, D, q + (size_t)r * D, D, kv, kv + D, 2 * D, 1, c->tokens, D,
                          m->cfg.decoder_heads, scores + (size_t)r * c->tokens);
    }
    model_gemm(m, y, D, att, D, b->out_w, P + b->out_b, B, D, D, true, -1, ws);
    layernorm_forward(ln, y, P + b->ln2_w, P + b->ln2_b, B, D, m->cfg.text_ln_eps);
    model_mlp(m, y, ln, b->fc_w, P + b->fc_b, b->proj_w, P + b->proj_b, B, D, H, m->cfg.activation, hid, ws);
}

/* Floats of tmp that block_step and cross_step need for B rows (each row its own scores). */
static size_t step_tmp(const clipc_config *cfg, int B, int len, int tokens) {
    size_t D = (size_t)cfg->text_width, H = (size_t)cfg->text_mlp_width;
    return (size_t)B * (6 * D + H) + (size_t)B * (len > tokens ? len : tokens) + 64;
}

/* logits [B, vocab] for token ids[r] at position t of every row. */
static void decode_step(const clipc_model *m, caption_cache *c, const int32_t *ids, int B, int t, float *x, float *y,
                        float *logits, float *ws, float *tmp) {
    const clipc_config *cfg = &m->cfg;
    const model_layout *L = &m->L;
    const float *P = m->params;
    int D = c->D;
    for (int r = 0; r < B; r++)
        for (int d = 0; d < D; d++)
            x[(size_t)r * D + d] = P[L->t_tok + (size_t)ids[r] * D + d] + P[L->t_pos + (size_t)t * D + d];
    for (int l = 0; l < cfg->text_layers; l++) /* the unimodal text tower: its outputs are the decoder's input */
        block_step(m, &L->t_blocks[l], x, B, t, c->text_kv + (size_t)l * c->rows * c->len * 2 * D, c->len,
                   cfg->text_heads, ws, tmp);
    memcpy(y, x, (size_t)B * D * sizeof *y);
    for (int l = 0; l < cfg->decoder_layers; l++) {
        block_step(m, &L->d_self[l], y, B, t, c->dec_kv + (size_t)l * c->rows * c->len * 2 * D, c->len,
                   cfg->decoder_heads, ws, tmp);
        cross_step(m, &L->d_cross[l], y, B, c, c->cross_kv + (size_t)l * c->images * c->tokens * 2 * D, ws, tmp);
    }
    layernorm_forward(y, y, P + L->d_ln_w, P + L->d_ln_b, B, D, cfg->text_ln_eps);
    matmul_forward(logits, y, P + L->d_proj, B, D, cfg->vocab_size);
}

/* ---- the caption search --------------------------------------------------------------------- */

/* A decoding batch: the caches, the image tokens' cross keys and values, buffers. */
typedef struct decoder_run {
    caption_cache c;
    float *x, *y, *logits, *ws, *tmp;
    int *image_of;
} decoder_run;

static void run_free(decoder_run *r) {
    free(r->c.text_kv), free(r->c.dec_kv), free(r->c.cross_kv);
    free(r->x), free(r->y), free(r->logits), free(r->ws), free(r->tmp), free(r->image_of);
    memset(r, 0, sizeof *r);
}

/* Sets up rows decoding rows (row r reads image image_of[r]) of n images whose
 * pooler tokens are tokens [n, Q - 1, E]: the cross-attention keys and values
 * ln_1_kv(tokens) W_{k,v}^T + b of every decoder layer. */
static int run_init(const clipc_model *m, decoder_run *r, const float *tokens, int n, int rows, const int *image_of,
                    clipc_error *err) {
    const clipc_config *cfg = &m->cfg;
    const float *P = m->params;
    memset(r, 0, sizeof *r);
    int D = cfg->text_width, len = cfg->context_length, Nt = cfg->pool_queries - 1, V = cfg->vocab_size;
    r->c = (caption_cache){.rows = rows, .len = len, .D = D, .images = n, .tokens = Nt};
    size_t text = (size_t)cfg->text_layers * rows * len * 2 * D, dec = (size_t)cfg->decoder_layers * rows * len * 2 * D;
    size_t cross = (size_t)cfg->decoder_layers * n * Nt * 2 * D;
    int widest = cfg->text_mlp_width > 3 * D ? cfg->text_mlp_width : 3 * D;
    size_t ws = lowp_scratch(rows > n * Nt ? rows : n * Nt, widest, widest);
    r->c.text_kv = malloc(text * sizeof(float));
    r->c.dec_kv = malloc(dec * sizeof(float));
    r->c.cross_kv = malloc(cross * sizeof(float));
    r->x = malloc((size_t)rows * D * sizeof(float));
    r->y = malloc((size_t)rows * D * sizeof(float));
    r->logits = malloc((size_t)rows * V * sizeof(float));
    r->ws = malloc(ws * sizeof(float) + 64);
    r->tmp = malloc(step_tmp(cfg, rows, len, Nt) * sizeof(float));
    r->image_of = malloc((size_t)rows * sizeof *r->image_of);
    float *ln = malloc((size_t)n * Nt * D * sizeof *ln);
    if (!r->c.text_kv || !r->c.dec_kv || !r->c.cross_kv || !r->x || !r->y || !r->logits || !r->ws || !r->tmp ||
        !r->image_of || !ln) {
        free(ln);
        run_free(r);
        return clipc_fail(err, "out of memory for the caption decoder");
    }
    memcpy(r->image_of, image_of, (size_t)rows * sizeof *image_of);
    r->c.image_of = r->image_of;
    for (int l = 0; l < cfg->decoder_layers; l++) {
        const block_offsets *b = &m->L.d_cross[l];
        float *kv = r->c.cross_kv + (size_t)l * n * Nt * 2 * D;
        layernorm_forward(ln, tokens, P + b->lnkv_w, P + b->lnkv_b, n * Nt, D, cfg->text_ln_eps);
        model_gemm(m, kv, 2 * D, ln, D, b->qkv_w + (size_t)D * D, P + b->qkv_b + D, n * Nt, D, 2 * D, false, -1, r->ws);
    }
    free(ln);
    return 0;
}

/* After a beam step, row k of every self-attention cache becomes a copy of
 * row parent[k]'s first t positions (through a staging copy: a parent may
 * itself be overwritten). */
static int run_reorder(const clipc_model *m, decoder_run *r, const int *parent, int rows, int t, clipc_error *err) {
    const clipc_config *cfg = &m->cfg;
    size_t row = (size_t)r->c.len * 2 * r->c.D, n = (size_t)t * 2 * r->c.D;
    float *stage = malloc((size_t)rows * n * sizeof *stage + 1);
    if (!stage) return clipc_fail(err, "out of memory for beam search");
    for (int layer = 0; layer < cfg->text_layers + cfg->decoder_layers; layer++) {
        float *base = layer < cfg->text_layers ? r->c.text_kv + (size_t)layer * r->c.rows * row
                                               : r->c.dec_kv + (size_t)(layer - cfg->text_layers) * r->c.rows * row;
        for (int k = 0; k < rows; k++) memcpy(stage + (size_t)k * n, base + (size_t)parent[k] * row, n * sizeof *stage);
        for (int k = 0; k < rows; k++) memcpy(base + (size_t)k * row, stage + (size_t)k * n, n * sizeof *stage);
    }
    free(stage);
    return 0;
}

typedef struct scored { float v; int i; } scored;

/* ascending by value, then by index (a stable order for ties) */
static int by_value(const void *a, const void *b) {
    const scored *x = a, *y = b;
    return x->v < y->v ? -1 : x->v > y->v ? 1 : x->i - y->i;
}

/* transformers' TopKLogitsWarper then TopPLogitsWarper on one row of logits:
 * everything outside the k largest, then outside the smallest set holding
 * top_p of the probability, becomes -inf (at least one token stays). */
static int warp_logits(float *l, int V, int top_k, float top_p, clipc_error *err) {
    if (top_k > 0 && top_k < V) {
        /* the k-th largest value: tokens below it are removed (transformers keeps ties with it) */
        float *copy = malloc((size_t)V * sizeof *copy);
        if (!copy) return clipc_fail(err, "out of memory");
        memcpy(copy, l, (size_t)V * sizeof *copy);
        for (int i = 0; i < top_k; i++) { /* partial selection: k passes of the max, k is small */
            int best = i;
            for (int j = i + 1; j < V; j++)
                if (copy[j] > copy[best]) best = j;
            float t = copy[i];
            copy[i] = copy[best];
            copy[best] = t;
        }
        float kth = copy[top_k - 1];
        free(copy);
        for (int j = 0; j < V; j++)
            if (l[j] < kth) l[j] = -INFINITY;
    }
    if (top_p > 0.0f && top_p < 1.0f) {
        /* ascending order; cumulative softmax; remove those whose cumulative sum is <= 1 - top_p */
        scored *s = malloc((size_t)V * sizeof *s);
        if (!s) return clipc_fail(err, "out of memory");
        for (int j = 0; j < V; j++) s[j] = (scored){l[j], j};
        qsort(s, (size_t)V, sizeof *s, by_value);
        double max = s[V - 1].v, sum = 0, cum = 0;
        for (int j = 0; j < V; j++) sum += isinf(s[j].v) ? 0 : exp(s[j].v - max);
        for (int j = 0; j < V - 1; j++) { /* the largest always stays */
            cum += isinf(s[j].v) ? 0 : exp(s[j].v - max) / sum;
            if (cum <= 1.0 - top_p) l[s[j].i] = -INFINITY;
        }
        free(s);
    }
    return 0;
}

/* OpenCLIP's generate() with generation_type top_k / top_p: every image's
 * row grows until EOT or max_len; the last token is forced to EOT. */
static int caption_sample(const clipc_model *m, const float *tokens, int n, const clipc_caption_options *o,
                          int32_t **ids, int *lens, clipc_error *err) {
    const clipc_config *cfg = &m->cfg;
    int V = cfg->vocab_size, max_len = o->max_len;
    int *image_of = malloc((size_t)n * sizeof *image_of);
    int32_t *last = malloc((size_t)n * sizeof *last);
    bool *done = calloc((size_t)n, sizeof *done);
    if (!image_of || !last || !done) {
        free(image_of), free(last), free(done);
        return clipc_fail(err, "out of memory");
    }
    for (int i = 0; i < n; i++) image_of[i] = i, ids[i][0] = last[i] = CLIPC_SOT, lens[i] = 1;
    decoder_run r;
    int rc = run_init(m, &r, tokens, n, n, image_of, err);
    rng g;
    rng_seed(&g, o->seed);
    for (int t = 0; rc == 0 && t + 1 < max_len; t++) {
        decode_step(m, &r.c, last, n, t, r.x, r.y, r.logits, r.ws, r.tmp);
        bool all = true;
        for (int i = 0; i < n && rc == 0; i++) {
            if (done[i]) continue;
            float *l = r.logits + (size_t)i * V;
            int len = t + 1; /* the current length: MinLengthLogitsProcessor bans EOT below min_len */
            if (len < o->min_len) l[CLIPC_EOT] = -INFINITY;
            rc = warp_logits(l, V, o->top_k, o->top_p, err);
            int32_t next = CLIPC_EOT;
            if (rc == 0 && len + 1 < max_len) { /* softmax(l / T), drawn from */
                double max = -INFINITY, sum = 0, u;
                for (int j = 0; j < V; j++) max = l[j] > max ? l[j] : max;
                for (int j = 0; j < V; j++) sum += exp((l[j] - max) / o->temperature);
                u = rng_uniform(&g) * sum;
                next = -1;
                for (int j = 0; j < V && next < 0; j++) {
                    double p = exp((l[j] - max) / o->temperature);
                    if (p > 0 && (u -= p) <= 0) next = j;
                }
                if (next < 0) /* rounding left u above 0: the last token with any probability */
                    for (int j = V - 1; j >= 0 && next < 0; j--)
                        if (l[j] > -INFINITY) next = j;
            }
            ids[i][lens[i]++] = last[i] = next;
            done[i] = next == CLIPC_EOT;
            all = all && done[i];
        }
        if (all) break;
    }
    run_free(&r);
    free(image_of), free(last), free(done);
    return rc;
}

/* One image's beam search (a group of gs beams; transformers 4.36's
 * BeamSearchScorer and BeamHypotheses as OpenCLIP's _generate_beamsearch
 * drives them: scores are sums of raw logits, a finished hypothesis scores
 * sum / length, the group is done when gs hypotheses are finished and the
 * best open beam cannot beat the worst of them). */
typedef struct hypothesis {
    double score;
    int32_t *ids;
    int len;
} hypothesis;

static void hyp_add(hypothesis *h, int *count, int gs, double *worst, const int32_t *ids, int len, double score) {
    if (*count < gs || score > *worst) {
        hypothesis *slot = &h[*count];
        memcpy(slot->ids, ids, (size_t)len * sizeof *ids);
        slot->len = len;
        slot->score = score;
        (*count)++;
        if (*count > gs) { /* drop the worst; the worst score becomes the second worst */
            int lo = 0;
            for (int k = 1; k < *count; k++)
                if (h[k].score < h[lo].score) lo = k;
            hypothesis dropped = h[lo];
            h[lo] = h[*count - 1];
            h[*count - 1] = dropped;
            (*count)--;
            *worst = INFINITY;
            for (int k = 0; k < *count; k++) *worst = h[k].score < *worst ? h[k].score : *worst;
        } else {
            *worst = score < *worst ? score : *worst;
        }
    }
}

static int caption_beam(const clipc_model *m, const float *tokens, int image, const clipc_caption_options *o,
                        int32_t *out, int *out_len, clipc_error *err) {
    const clipc_config *cfg = &m->cfg;
    int V = cfg->vocab_size, max_len = o->max_len, groups = o->beam_groups > 0 ? o->beam_groups : 1;
    int gs = o->beams / groups > 0 ? o->beams / groups : 1;
    int *image_of = calloc((size_t)gs, sizeof *image_of);
    int32_t *seq = malloc((size_t)gs * max_len * sizeof *seq), *next_seq = malloc((size_t)gs * max_len * sizeof *seq);
    int32_t *last = malloc((size_t)gs * sizeof *last);
    double *score = malloc((size_t)gs * sizeof *score), *next_score = malloc((size_t)gs * sizeof *score);
    int *parent = malloc((size_t)gs * sizeof *parent);
    scored *cand = malloc((size_t)gs * V * sizeof *cand);
    hypothesis *hyps = calloc((size_t)gs + 1, sizeof *hyps);
    int32_t *hyp_ids = malloc((size_t)(gs + 1) * max_len * sizeof *hyp_ids);
    if (!image_of || !seq || !next_seq || !last || !score || !next_score || !parent || !cand || !hyps || !hyp_ids) {
        free(image_of), free(seq), free(next_seq), free(last), free(score), free(next_score), free(parent), free(cand);
        free(hyps), free(hyp_ids);
        return clipc_fail(err, "out of memory for beam search");
    }
    for (int k = 0; k <= gs; k++) hyps[k].ids = hyp_ids + (size_t)k * max_len;
    decoder_run r;
    int rc = run_init(m, &r, tokens + (size_t)image * (cfg->pool_queries - 1) * cfg->embed_dim, 1, gs, image_of, err);
    int n_hyps = 0, len = 1;
    double worst = 1e9;
    bool done = false;
    for (int k = 0; k < gs; k++) seq[(size_t)k * max_len] = last[k] = CLIPC_SOT, score[k] = k ? -1e9 : 0;
    while (rc == 0) {
        decode_step(m, &r.c, last, gs, len - 1, r.x, r.y, r.logits, r.ws, r.tmp);
        /* candidates: processed logits + the beam's score; the 2 gs best, in order */
        int nc = 0;
        for (int k = 0; k < gs; k++) {
            float *l = r.logits + (size_t)k * V;
            if (len < o->min_len) l[CLIPC_EOT] = -INFINITY;
            for (int v = 0; v < V; v++) cand[nc++] = (scored){(float)(l[v] + score[k]), k * V + v};
        }
        int want = 2 * gs < nc ? 2 * gs : nc;
        for (int a = 0; a < want; a++) { /* selection of the best: want is small */
            int best = a;
            for (int b = a + 1; b < nc; b++)
                if (cand[b].v > cand[best].v || (cand[b].v == cand[best].v && cand[b].i < cand[best].i)) best = b;
            scored t = cand[a];
            cand[a] = cand[best];
            cand[best] = t;
        }
        int cur_len = len + 1, kept = 0;
        for (int rank = 0; rank < want && kept < gs; rank++) {
            int beam = cand[rank].i / V, token = cand[rank].i % V;
            if (token == CLIPC_EOT) {
                if (rank >= gs) continue; /* an EOT below the top gs candidates is not a hypothesis */
                hyp_add(hyps, &n_hyps, gs, &worst, seq + (size_t)beam * max_len, len, cand[rank].v / cur_len);
            } else {
                parent[kept] = beam;
                next_score[kept] = cand[rank].v;
                memcpy(next_seq + (size_t)kept * max_len, seq + (size_t)beam * max_len, (size_t)len * sizeof *seq);
                next_seq[(size_t)kept * max_len + len] = token;
                kept++;
            }
        }
        if (kept < gs) {
            rc = clipc_fail(err, "beam search: too few candidates");
            break;
        }
        /* BeamHypotheses.is_done: gs finished and the best candidate cannot beat the worst of them */
        done = n_hyps >= gs && worst >= cand[0].v / cur_len;
        if ((rc = run_reorder(m, &r, parent, gs, len, err))) break; /* the caches follow their beams */
        memcpy(seq, next_seq, (size_t)gs * max_len * sizeof *seq);
        memcpy(score, next_score, (size_t)gs * sizeof *score);
        for (int k = 0; k < gs; k++) last[k] = seq[(size_t)k * max_len + len];
        len++;
        if (done || len >= max_len) break;
    }
    if (rc == 0) {
        if (!done) /* finalize: the open beams become hypotheses too, at their length */
            for (int k = 0; k < gs; k++) hyp_add(hyps, &n_hyps, gs, &worst, seq + (size_t)k * max_len, len, score[k] / len);
        int best = 0; /* sorted by score, the last popped: among equal scores the later one */
        for (int k = 1; k < n_hyps; k++)
            if (hyps[k].score >= hyps[best].score) best = k;
        memcpy(out, hyps[best].ids, (size_t)hyps[best].len * sizeof *out);
        *out_len = hyps[best].len;
        if (*out_len < max_len) out[(*out_len)++] = CLIPC_EOT;
    }
    run_free(&r);
    free(image_of), free(seq), free(next_seq), free(last), free(score), free(next_score), free(parent), free(cand);
    free(hyps), free(hyp_ids);
    return rc;
}

int clipc_caption(clipc_model *m, const float *pixels, int n, const clipc_caption_options *o, int32_t **ids, int *lens,
                  clipc_error *err) {
    const clipc_config *cfg = &m->cfg;
    clipc_caption_options def;
    if (!o) clipc_caption_defaults(&def), o = &def;
    if (cfg->family != CLIPC_COCA) return clipc_fail(err, "captions need a CoCa model (this one is %s)", clipc_model_family_name(m));
    if (o->max_len < 2 || o->max_len > cfg->context_length)
        return clipc_fail(err, "a caption of at most %d tokens does not fit: 2..%d (the model's context)", o->max_len,
                          cfg->context_length);
    if (o->min_len < 0 || o->min_len >= o->max_len)
        return clipc_fail(err, "the minimum caption length %d must be below the maximum %d", o->min_len, o->max_len);
    if (o->beams > 1 && (o->beam_groups < 1 || o->beams % o->beam_groups))
        return clipc_fail(err, "%d beams do not split into %d groups", o->beams, o->beam_groups);
    if (o->beams > 64) return clipc_fail(err, "%d beams is too many (at most 64)", o->beams);
    if (o->beams <= 1 && !(o->temperature > 0.0f)) return clipc_fail(err, "the temperature must be positive");
    if (o->top_p < 0.0f || o->top_p > 1.0f) return clipc_fail(err, "top-p %g is outside 0..1", o->top_p);
    int E = cfg->embed_dim, Nt = cfg->pool_queries - 1;
    for (int i = 0; i < n; i++) ids[i] = NULL;
    float *emb = malloc((size_t)(n > 0 ? n : 1) * E * sizeof *emb), *tokens = malloc((size_t)(n > 0 ? n : 1) * Nt * E * sizeof *tokens);
    int rc = emb && tokens ? 0 : clipc_fail(err, "out of memory");
    for (int i = 0; i < n && rc == 0; i++)
        if (!(ids[i] = malloc((size_t)o->max_len * sizeof **ids))) rc = clipc_fail(err, "out of memory");
    /* the image tower, a chunk of images at a time */
    for (int done = 0; done < n && rc == 0; done += 16) {
        int b = n - done < 16 ? n - done : 16;
        arena a = {0};
        rc = arena_reserve(&a, vit_scratch(cfg, b), err);
        if (rc == 0 && vit_forward_tokens(m, &a, pixels + (size_t)done * 3 * cfg->image_resolution * cfg->image_resolution, b,
                                          emb + (size_t)done * E, tokens + (size_t)done * Nt * E))
            rc = clipc_fail(err, "out of memory encoding images");
        arena_free(&a);
    }
    if (rc == 0 && o->beams > 1)
        for (int i = 0; i < n && rc == 0; i++) rc = caption_beam(m, tokens, i, o, ids[i], &lens[i], err);
    else if (rc == 0)
        rc = caption_sample(m, tokens, n, o, ids, lens, err);
    free(emb), free(tokens);
    if (rc)
        for (int i = 0; i < n; i++) free(ids[i]), ids[i] = NULL;
    return rc;
}

int coca_teacher_logits(clipc_model *m, const float *pixels, const int32_t *tokens, int n, float *logits,
                        clipc_error *err) {
    const clipc_config *cfg = &m->cfg;
    if (cfg->family != CLIPC_COCA) return clipc_fail(err, "not a CoCa model");
    if (n < 1 || n > cfg->context_length) return clipc_fail(err, "%d tokens do not fit the context of %d", n, cfg->context_length);
    int E = cfg->embed_dim, Nt = cfg->pool_queries - 1, image_of = 0;
    float *e = malloc((size_t)E * sizeof *e), *tok = malloc((size_t)Nt * E * sizeof *tok);
    arena a = {0};
    int rc = e && tok ? arena_reserve(&a, vit_scratch(cfg, 1), err) : clipc_fail(err, "out of memory");
    if (rc == 0 && vit_forward_tokens(m, &a, pixels, 1, e, tok)) rc = clipc_fail(err, "out of memory");
    arena_free(&a);
    decoder_run r;
    if (rc == 0) rc = run_init(m, &r, tok, 1, 1, &image_of, err);
    for (int t = 0; rc == 0 && t < n; t++) {
        decode_step(m, &r.c, tokens + t, 1, t, r.x, r.y, r.logits, r.ws, r.tmp);
        memcpy(logits + (size_t)t * cfg->vocab_size, r.logits, (size_t)cfg->vocab_size * sizeof *logits);
    }
    if (rc == 0) run_free(&r);
    free(e), free(tok);
    return rc;
}
