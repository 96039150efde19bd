/* test_coca.c — CoCa against OpenCLIP's own outputs (tests/data/coca/, made
 * by tools/ref/gen_coca_refs.py with open_clip 2.23 on random weights): the
 * contrastive embeddings, the decoder's logits under teacher forcing (through
 * the cached token-by-token path), the captions of its generate() (greedy
 * and its default beam search), decoding ids back to text, sampling, the
 * caption command. */
#include "test.h"
#include "../src/eval/eval.h"
#include "../src/train/train.h"

#include <cjson/cJSON.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <unistd.h>

#define DATA "tests/data/coca"

static double largest(const float *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(a[i]));
    return m;
}

/* dir/NAME.npy */
static int read_case_npy(const char *dir, const char *name, npy_array *a, clipc_error *err) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    return npy_read(path, a, err);
}

static void check_embeddings(const char *dir, clipc_model *m, const npy_array *images, const npy_array *tokens) {
    clipc_error err;
    npy_array fi, ft;
    if (read_case_npy(dir, "image_features", &fi, &err) || read_case_npy(dir, "text_features", &ft, &err)) {
        CHECK(0, "%s", err.message);
        return;
    }
    int E = clipc_model_config(m)->embed_dim, ni = (int)images->shape[0], nt = (int)tokens->shape[0];
    float *img = malloc((size_t)ni * E * sizeof *img), *txt = malloc((size_t)nt * E * sizeof *txt);
    CHECK(clipc_encode_image(m, images->data, ni, img, &err) == 0, "%s", err.message);
    CHECK(clipc_encode_text(m, tokens->data, nt, txt, &err) == 0, "%s", err.message);
    double di = max_abs_diff(img, fi.data, fi.count) / largest(fi.data, fi.count);
    double dt = max_abs_diff(txt, ft.data, ft.count) / largest(ft.data, ft.count);
    double ci = min_row_cosine(img, fi.data, ni, E), ct = min_row_cosine(txt, ft.data, nt, E);
    CHECK(di <= 1e-4 && ci >= 0.99999, "CoCa image embeddings: max diff %.3g of the largest, cosine %.8f", di, ci);
    CHECK(dt <= 1e-4 && ct >= 0.99999, "CoCa text embeddings (CLS token): max diff %.3g, cosine %.8f", dt, ct);
    printf("  CoCa embeddings: image max diff %.2g (relative), cosine %.8f; text %.2g, cosine %.8f\n", di, ci, dt, ct);
    free(img), free(txt);
    npy_free(&fi), npy_free(&ft);
}

/* forward(image 0, text 1 without its last token)'s logits: the top 32 of
 * each position (values and ids) and the logsumexp */
static void check_logits(const char *dir, clipc_model *m, const npy_array *images, const npy_array *tokens) {
    clipc_error err;
    npy_array top, ids, lse;
    if (read_case_npy(dir, "logits_top", &top, &err) || read_case_npy(dir, "logits_top_ids", &ids, &err) ||
        read_case_npy(dir, "logits_lse", &lse, &err)) {
        CHECK(0, "%s", err.message);
        return;
    }
    const clipc_config *c = clipc_model_config(m);
    int n = (int)top.shape[0], K = (int)top.shape[1], V = c->vocab_size;
    float *logits = malloc((size_t)n * V * sizeof *logits);
    const int32_t *text = (const int32_t *)tokens->data + c->context_length; /* text 1 */
    CHECK(coca_teacher_logits(m, images->data, text, n, logits, &err) == 0, "%s", err.message);
    double worst = 0, scale = largest(top.data, top.count), worst_lse = 0;
    int argmax_same = 0;
    for (int t = 0; t < n; t++) {
        const float *l = logits + (size_t)t * V;
        int best = 0;
        double mx = -INFINITY, sum = 0;
        for (int v = 0; v < V; v++) {
            if (l[v] > l[best]) best = v;
            mx = fmax(mx, l[v]);
        }
        for (int v = 0; v < V; v++) sum += exp(l[v] - mx);
        worst_lse = fmax(worst_lse, fabs(mx + log(sum) - ((float *)lse.data)[t]));
        for (int k = 0; k < K; k++) {
            int v = ((int32_t *)ids.data)[t * K + k];
            worst = fmax(worst, fabs(l[v] - ((float *)top.data)[t * K + k]));
        }
        argmax_same += best == ((int32_t *)ids.data)[t * K];
    }
    CHECK(worst / scale <= 1e-4 && worst_lse <= 1e-4 * scale && argmax_same == n,
          "decoder logits (teacher forcing, %d positions): max diff %.3g of %.3g, logsumexp %.3g, argmax %d of %d", n, worst,
          scale, worst_lse, argmax_same, n);
    printf("  CoCa decoder logits, %d positions through the KV cache: max diff %.2g (largest %.2g), logsumexp %.2g, "
           "argmax %d of %d\n", n, worst, scale, worst_lse, argmax_same, n);
    free(logits);
    npy_free(&top), npy_free(&ids), npy_free(&lse);
}

static void check_generation(const char *dir, clipc_model *m, const npy_array *images) {
    clipc_error err;
    unsigned char *text;
    size_t len;
    char path[600];
    snprintf(path, sizeof path, "%s/captions.json", dir);
    if (read_file(path, &text, &len, &err)) {
        CHECK(0, "%s", err.message);
        return;
    }
    cJSON *j = cJSON_ParseWithLength((const char *)text, len);
    free(text);
    const char *kinds[2] = {"greedy", "beam"};
    int n = (int)images->shape[0];
    for (int k = 0; k < 2; k++) {
        clipc_caption_options o;
        clipc_caption_defaults(&o);
        if (k == 0) o.beams = 1, o.top_k = 1; /* OpenCLIP's generation_type "top_k", top_k 1 */
        int32_t *ids[8];
        int lens[8];
        const cJSON *want = cJSON_GetObjectItem(j, kinds[k]);
        n = want && cJSON_GetArraySize(want) < (int)images->shape[0] ? cJSON_GetArraySize(want) : (int)images->shape[0];
        CHECK(clipc_caption(m, images->data, n, &o, ids, lens, &err) == 0, "%s", err.message);
        int same = 0, i = 0;
        for (const cJSON *row = want ? want->child : NULL; row && i < n; row = row->next, i++) {
            bool eq = cJSON_GetArraySize(row) == lens[i];
            int p = 0;
            for (const cJSON *v = row->child; v && eq; v = v->next, p++) eq = v->valueint == ids[i][p];
            same += eq;
            if (!eq) {
                printf("  %s caption %d: got", kinds[k], i);
                for (int q = 0; q < lens[i]; q++) printf(" %d", ids[i][q]);
                printf("\n");
            }
            free(ids[i]);
        }
        CHECK(same == n, "%s captions: %d of %d equal OpenCLIP's generate()", kinds[k], same, n);
        printf("  CoCa %s captions: %d of %d equal OpenCLIP's generate() token for token\n", kinds[k], same, n);
    }
    cJSON_Delete(j);
}

/* Decoding: SimpleTokenizer.decode of encoded texts gives the cleaned text back. */
static void check_decode(void) {
    clipc_error err;
    clipc_tokenizer *tok = clipc_tokenizer_new(&err);
    const char *texts[] = {"a photo of a dog.", "Two people, walking on the beach at sunset!", "café 東京 😀 x²",
                           "numbers 12,345 and 3.14"};
    /* as SimpleTokenizer.decode gives them: every word and number symbol ends in "</w>", so a space */
    const char *want[] = {"a photo of a dog .", "two people , walking on the beach at sunset !", "café 東京 😀 x ²",
                          "numbers 1 2 , 3 4 5 and 3 . 1 4"};
    for (size_t i = 0; tok && i < sizeof texts / sizeof *texts; i++) {
        int32_t row[77];
        CHECK(clipc_tokenize(tok, texts[i], 77, 0, row, &err) == 0, "%s", err.message);
        char *back = clipc_tokenizer_decode(tok, row, 77, &err);
        CHECK(back && !strcmp(back, want[i]), "decode '%s': '%s', expected '%s'", texts[i], back ? back : err.message, want[i]);
        free(back);
    }
    int32_t bad[2] = {CLIPC_SOT, 60000};
    char *s = clipc_tokenizer_decode(tok, bad, 2, &err);
    CHECK(!s && strstr(err.message, "outside the vocabulary"), "an id outside the vocabulary is refused");
    free(s);
    clipc_tokenizer_free(tok);
}

/* Sampling: a seed gives the same caption twice; top-k 1 is greedy at any temperature; a
 * caption is never shorter than min_len nor longer than max_len, and ends in EOT. */
static void check_sampling(clipc_model *m, const npy_array *images) {
    clipc_error err;
    clipc_caption_options o;
    clipc_caption_defaults(&o);
    o.beams = 1, o.top_k = 50, o.top_p = 0.9f, o.temperature = 1.3f, o.seed = 5, o.min_len = 7, o.max_len = 12;
    int32_t *a[2], *b[2], *g[2], *g2[2];
    int la[2], lb[2], lg[2], lg2[2];
    CHECK(clipc_caption(m, images->data, 2, &o, a, la, &err) == 0 && clipc_caption(m, images->data, 2, &o, b, lb, &err) == 0,
          "%s", err.message);
    bool same = la[0] == lb[0] && !memcmp(a[0], b[0], (size_t)la[0] * sizeof **a);
    CHECK(same, "the same seed gives the same sampled caption");
    for (int i = 0; i < 2; i++)
        CHECK(la[i] >= o.min_len && la[i] <= o.max_len && a[i][0] == CLIPC_SOT && a[i][la[i] - 1] == CLIPC_EOT,
              "sampled caption %d: %d tokens (%d..%d), SOT first and EOT last", i, la[i], o.min_len, o.max_len);
    clipc_caption_options greedy = o;
    greedy.top_k = 1, greedy.top_p = 0, greedy.temperature = 1;
    clipc_caption_options hot = greedy;
    hot.temperature = 3.0f, hot.seed = 99;
    CHECK(clipc_caption(m, images->data, 2, &greedy, g, lg, &err) == 0 && clipc_caption(m, images->data, 2, &hot, g2, lg2, &err) == 0,
          "%s", err.message);
    CHECK(lg[0] == lg2[0] && !memcmp(g[0], g2[0], (size_t)lg[0] * sizeof **g), "top-k 1 is greedy at any temperature and seed");
    for (int i = 0; i < 2; i++) free(a[i]), free(b[i]), free(g[i]), free(g2[i]);
    /* bad options are refused with the reason */
    clipc_caption_options bad = o;
    bad.max_len = 500;
    int32_t *ids[2];
    int lens[2];
    CHECK(clipc_caption(m, images->data, 1, &bad, ids, lens, &err) == -1 && strstr(err.message, "context"), "max_len beyond the context: %s", err.message);
    bad = o, bad.beams = 5, bad.beam_groups = 3;
    CHECK(clipc_caption(m, images->data, 1, &bad, ids, lens, &err) == -1 && strstr(err.message, "groups"), "5 beams in 3 groups: %s", err.message);
}

/* clipc caption prints the library's caption of the file, decoded; --json too; refusals */
static void check_cli(clipc_model *m) {
    clipc_error err;
    const char *img = ref_path("preprocess/images/chelsea_224x224.png");
    clipc_tokenizer *tok = clipc_tokenizer_new(&err);
    float px[3 * 32 * 32];
    const char *modes[2] = {"--top-k 1", ""};
    for (int k = 0; k < 2 && tok; k++) {
        clipc_caption_options o;
        clipc_caption_defaults(&o);
        if (k == 0) o.beams = 1, o.top_k = 1;
        int32_t *ids;
        int len;
        char *want = NULL;
        if (clipc_model_preprocess_file(m, img, px, &err) == 0 && clipc_caption(m, px, 1, &o, &ids, &len, &err) == 0) {
            want = clipc_tokenizer_decode(tok, ids, len, &err);
            free(ids);
        }
        char cmd[1024], path[64];
        snprintf(path, sizeof path, "/tmp/clipc_caption_%d.json", (int)getpid());
        snprintf(cmd, sizeof cmd, "%s caption -m " DATA "/open_clip_model.safetensors %s --json %s > %s", clipc_binary, modes[k],
                 img, path);
        CHECK(run_cmd(cmd) == 0, "clipc caption %s", modes[k]);
        unsigned char *text;
        size_t tl;
        cJSON *j = read_file(path, &text, &tl, &err) == 0 ? cJSON_ParseWithLength((const char *)text, tl) : NULL;
        if (j) free(text);
        const cJSON *cap = j && j->child ? cJSON_GetObjectItem(j->child, "caption") : NULL;
        CHECK(want && cJSON_IsString(cap) && !strcmp(cap->valuestring, want), "clipc caption %s: '%s', the library's '%s'",
              modes[k], cJSON_IsString(cap) ? cap->valuestring : "(none)", want ? want : err.message);
        cJSON_Delete(j);
        free(want);
        unlink(path);
    }
    clipc_tokenizer_free(tok);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s caption -m models/clipc-fmnist.safetensors %s 2>&1 | grep -q 'captions need a CoCa model'",
             clipc_binary, img);
    CHECK(run_cmd(cmd) == 0, "clipc caption with a CLIP model says it needs CoCa");
    snprintf(cmd, sizeof cmd, "%s caption -m " DATA "/open_clip_model.safetensors --beam 4 --top-k 3 %s 2>&1 | grep -q 'give one of them'",
             clipc_binary, img);
    CHECK(run_cmd(cmd) == 0, "clipc caption refuses --beam with --top-k");
    snprintf(cmd, sizeof cmd, "%s caption -m " DATA "/open_clip_model.safetensors --temprature 2 %s 2>&1 | grep -q 'did you mean --temperature'",
             clipc_binary, img);
    CHECK(run_cmd(cmd) == 0, "clipc caption suggests --temperature");
}

/* BLEU-1..4 and CIDEr-D against pycocoevalcap's scorers on five corpora (1 to 300 images). */
static void check_metrics(void) {
    unsigned char *text;
    size_t len;
    clipc_error err;
    if (read_file("tests/data/captioning/metrics.json", &text, &len, &err)) {
        CHECK(0, "%s", err.message);
        return;
    }
    cJSON *root = cJSON_ParseWithLength((const char *)text, len);
    free(text);
    int c = 0;
    for (const cJSON *cs = cJSON_GetObjectItem(root, "cases")->child; cs; cs = cs->next, c++) {
        const cJSON *hj = cJSON_GetObjectItem(cs, "hyps"), *rj = cJSON_GetObjectItem(cs, "refs");
        int n = cJSON_GetArraySize(hj), total = 0;
        for (const cJSON *r = rj->child; r; r = r->next) total += cJSON_GetArraySize(r);
        const char **hyps = malloc((size_t)n * sizeof *hyps), **refs = malloc((size_t)total * sizeof *refs);
        int *first = malloc(((size_t)n + 1) * sizeof *first), i = 0, k = 0;
        for (const cJSON *h = hj->child, *r = rj->child; h; h = h->next, r = r->next, i++) {
            hyps[i] = h->valuestring;
            first[i] = k;
            for (const cJSON *x = r->child; x; x = x->next) refs[k++] = x->valuestring;
        }
        first[n] = k;
        caption_scores sc;
        double *each = malloc((size_t)n * sizeof *each);
        CHECK(caption_scores_compute(hyps, refs, first, n, &sc, each, &err) == 0, "%s", err.message);
        double db = 0, dc = fabs(sc.cider - cJSON_GetObjectItem(cs, "cider")->valuedouble), de = 0;
        int b = 0;
        for (const cJSON *x = cJSON_GetObjectItem(cs, "bleu")->child; x && b < 4; x = x->next, b++)
            db = fmax(db, fabs(sc.bleu[b] - x->valuedouble));
        i = 0;
        for (const cJSON *x = cJSON_GetObjectItem(cs, "cider_each")->child; x && i < n; x = x->next, i++)
            de = fmax(de, fabs(each[i] - x->valuedouble));
        CHECK(db < 1e-9 && dc < 1e-9 && de < 1e-9, "corpus of %d: BLEU differs by %.3g, CIDEr by %.3g (per image %.3g)", n, db,
              dc, de);
        printf("  caption metrics, %3d images: BLEU-4 %.4f, CIDEr-D %.4f (pycocoevalcap's within %.1g)\n", n, sc.bleu[3],
               sc.cider, fmax(db, fmax(dc, de)));
        free(hyps), free(refs), free(first), free(each);
    }
    cJSON_Delete(root);
    CHECK(c == 5, "%d metric corpora", c);
    /* an image without references is refused */
    const char *h[1] = {"a dog"};
    int first[2] = {0, 0};
    caption_scores sc;
    CHECK(caption_scores_compute(h, NULL, first, 1, &sc, NULL, &err) == -1 && strstr(err.message, "no reference"),
          "an image without references: %s", err.message);
}

/* clipc eval captioning: its scores are the metrics of the library's own captions; Fashion-MNIST runs too */
static void check_eval(clipc_model *m) {
    char dir[] = "/tmp/clipc_capeval_XXXXXX", cmd[2048], path[600];
    clipc_error err;
    if (!mkdtemp(dir)) return;
    /* absolute paths: a CSV's relative paths are relative to its folder */
    char a[4096], b[4096];
    if (!realpath(ref_path("preprocess/images/chelsea_224x224.png"), a) ||
        !realpath(ref_path("preprocess/images/rocket_small_60x90.png"), b)) {
        CHECK(0, "the reference images");
        return;
    }
    snprintf(path, sizeof path, "%s/caps.csv", dir);
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "filepath,title\n%s,a cat on a table\n%s,a rocket launch\n%s,participating arctic poems\n", a, b, a);
        fclose(f);
    }
    snprintf(cmd, sizeof cmd, "%s eval captioning -m " DATA "/open_clip_model.safetensors --data %s --top-k 1 --out %s/out > %s/log 2>&1",
             clipc_binary, path, dir, dir);
    CHECK(run_cmd(cmd) == 0, "clipc eval captioning on a CSV (%s/log)", dir);
    /* the expected scores: greedy captions of the two images, references grouped by image */
    clipc_tokenizer *tok = clipc_tokenizer_new(&err);
    const char *imgs[2] = {a, b};
    char *caps[2] = {NULL, NULL};
    float px[3 * 32 * 32];
    clipc_caption_options o;
    clipc_caption_defaults(&o);
    o.beams = 1, o.top_k = 1;
    for (int i = 0; i < 2 && tok; i++) {
        int32_t *ids;
        int len;
        if (clipc_model_preprocess_file(m, imgs[i], px, &err) == 0 && clipc_caption(m, px, 1, &o, &ids, &len, &err) == 0) {
            caps[i] = clipc_tokenizer_decode(tok, ids, len, &err);
            free(ids);
        }
    }
    const char *refs[3] = {"a cat on a table", "participating arctic poems", "a rocket launch"};
    int first[3] = {0, 2, 3};
    caption_scores want;
    bool ok = caps[0] && caps[1] && caption_scores_compute((const char *const *)caps, refs, first, 2, &want, NULL, &err) == 0;
    snprintf(path, sizeof path, "%s/out/captioning.json", dir);
    unsigned char *text;
    size_t len;
    cJSON *j = read_file(path, &text, &len, &err) == 0 ? cJSON_ParseWithLength((const char *)text, len) : NULL;
    if (j) free(text);
    const cJSON *mt = cJSON_GetObjectItem(j, "metrics");
    const cJSON *b4 = cJSON_GetObjectItem(mt, "bleu_4"), *cd = cJSON_GetObjectItem(mt, "cider_d");
    CHECK(ok && cJSON_IsNumber(b4) && cJSON_IsNumber(cd) && fabs(b4->valuedouble - want.bleu[3]) < 1e-12 &&
              fabs(cd->valuedouble - want.cider) < 1e-12 && want.cider > 0,
          "eval captioning's BLEU-4 %g and CIDEr-D %g are the library's %g and %g", cJSON_IsNumber(b4) ? b4->valuedouble : -1,
          cJSON_IsNumber(cd) ? cd->valuedouble : -1, ok ? want.bleu[3] : -1, ok ? want.cider : -1);
    cJSON_Delete(j);
    free(caps[0]), free(caps[1]);
    clipc_tokenizer_free(tok);
    /* Fashion-MNIST: the share of captions naming the class is reported (random weights: 0) */
    snprintf(cmd, sizeof cmd, "%s eval captioning -m " DATA "/open_clip_model.safetensors --dataset fashion-mnist --limit 4 "
             "--beam 2 --out %s/fm > %s/fm.log 2>&1 && grep -q 'naming the right class: 0 of 4' %s/fm.log",
             clipc_binary, dir, dir, dir);
    CHECK(run_cmd(cmd) == 0, "clipc eval captioning on Fashion-MNIST (%s/fm.log)", dir);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (test_failed == 0) run_cmd(cmd);
}

/* ---- training: gradients against finite differences on coca-tiny ---------------------------------- */

/* The parameters (by name) whose every float, or first 24, are checked. */
static const char *const IMAGE_PARAMS[] = {
    "visual.attn_pool.query", "visual.attn_pool.attn.q_proj_weight", "visual.attn_pool.attn.k_proj_weight",
    "visual.attn_pool.attn.v_proj_weight", "visual.attn_pool.attn.in_proj_bias", "visual.attn_pool.attn.out_proj.weight",
    "visual.attn_pool.ln_q.weight", "visual.attn_pool.ln_k.bias", "visual.ln_post.weight", "visual.proj",
    "visual.transformer.resblocks.0.attn.in_proj_weight", "visual.transformer.resblocks.0.mlp.c_fc.weight",
    "visual.conv1.weight", "visual.positional_embedding", "visual.class_embedding", "visual.ln_pre.bias",
};

typedef struct image_objective {
    clipc_model *m;
    const float *pixels, *wf, *wt;
    int n;
} image_objective;

/* sum(wf . features) + sum(wt . pooler tokens) */
static double image_objective_value(const image_objective *o) {
    const clipc_config *c = clipc_model_config(o->m);
    tower_cache tc = {0};
    clipc_error err;
    float f[4 * 64];
    double v = 0;
    if (vit_train_forward(o->m, NULL, o->pixels, o->n, f, &tc, &err) == 0) {
        for (int i = 0; i < o->n * c->embed_dim; i++) v += (double)o->wf[i] * f[i];
        for (size_t i = 0; i < (size_t)o->n * c->pool_queries * c->embed_dim; i++)
            if (i % ((size_t)c->pool_queries * c->embed_dim) >= (size_t)c->embed_dim) v += (double)o->wt[i] * tc.cp_y[i];
    }
    tower_cache_free(&tc);
    return v;
}

static void check_image_grad(void) {
    clipc_error err;
    clipc_model *m = clipc_model_init("coca-tiny", 3, &err);
    CHECK(m != NULL, "%s", m ? "" : err.message);
    if (!m) return;
    const clipc_config *c = clipc_model_config(m);
    int n = 2, R = c->image_resolution, E = c->embed_dim, Q = c->pool_queries;
    float *px = malloc((size_t)n * 3 * R * R * sizeof *px), *wf = malloc((size_t)n * E * sizeof *wf);
    float *wt = malloc((size_t)n * Q * E * sizeof *wt), *G = calloc(m->table.total, sizeof *G);
    rng r;
    rng_seed(&r, 4);
    for (int i = 0; i < n * 3 * R * R; i++) px[i] = (float)rng_normal(&r);
    for (int i = 0; i < n * E; i++) wf[i] = (float)rng_normal(&r);
    for (int i = 0; i < n * Q * E; i++) wt[i] = (float)rng_normal(&r);
    /* perturb the LayerNorms and biases off their init, so no gradient vanishes by symmetry */
    for (int i = 0; i < m->table.count; i++)
        if (m->table.items[i].ndim == 1)
            for (size_t j = 0; j < m->table.items[i].numel; j++) m->params[m->table.items[i].offset + j] += 0.1f * (float)rng_normal(&r);
    tower_cache tc = {0};
    float f[4 * 64];
    CHECK(vit_train_forward(m, NULL, px, n, f, &tc, &err) == 0 && vit_train_backward_tokens(m, &tc, wf, wt, G, &err) == 0,
          "%s", err.message);
    tower_cache_free(&tc);
    image_objective o = {m, px, wf, wt, n};
    double worst = 0, scale = 0;
    int checked = 0;
    for (size_t k = 0; k < sizeof IMAGE_PARAMS / sizeof *IMAGE_PARAMS; k++) {
        const param_spec *p = params_find(&m->table, IMAGE_PARAMS[k]);
        CHECK(p != NULL, "no parameter %s", IMAGE_PARAMS[k]);
        for (size_t j = 0; p && j < p->numel && j < 24; j++) {
            float *x = m->params + p->offset + j, keep = *x, h = 1e-2f * fmaxf(1.0f, fabsf(keep));
            *x = keep + h;
            double up = image_objective_value(&o);
            *x = keep - h;
            double down = image_objective_value(&o);
            *x = keep;
            double fd = (up - down) / (2 * h), an = G[p->offset + j];
            worst = fmax(worst, fabs(fd - an));
            scale = fmax(scale, fabs(an));
            checked++;
        }
    }
    CHECK(worst <= 2e-3 * fmax(scale, 1e-3), "CoCa image tower (pooler, ln_post, proj, blocks, embedding): %d gradients "
          "vs finite differences: max diff %.3g (scale %.3g)", checked, worst, scale);
    printf("  CoCa image tower: %d gradients vs finite differences, max diff %.2g of %.2g\n", checked, worst, scale);
    free(px), free(wf), free(wt), free(G);
    clipc_model_free(m);
}

/* The whole CoCa objective: weighted features of both towers plus weight * the caption loss. */
typedef struct coca_objective {
    clipc_model *m;
    const float *pixels, *wi, *wt;
    const int32_t *tokens;
    int n;
    float weight;
} coca_objective;

static double coca_objective_value(const coca_objective *o, float *G) {
    const clipc_config *c = clipc_model_config(o->m);
    tower_cache ti = {0}, tt = {0};
    clipc_error err;
    int E = c->embed_dim;
    float fi[4 * 64], ft[4 * 64];
    double v = 0, loss = 0;
    long targets = 0;
    float *dtext = NULL, *dimage = NULL;
    if (vit_train_forward(o->m, NULL, o->pixels, o->n, fi, &ti, &err) == 0 &&
        text_train_forward(o->m, NULL, NULL, o->tokens, o->n, ft, &tt, &err) == 0) {
        dtext = calloc((size_t)tt.T * c->text_width, sizeof *dtext);
        dimage = calloc((size_t)o->n * c->pool_queries * E, sizeof *dimage);
        if (coca_caption_train(o->m, &tt, &ti, o->weight, G, dtext, dimage, &loss, &targets, &err) == 0) {
            for (int i = 0; i < o->n * E; i++) v += (double)o->wi[i] * fi[i] + (double)o->wt[i] * ft[i];
            v += o->weight * loss;
            if (G) {
                CHECK(text_train_backward_tokens(o->m, &tt, o->wt, dtext, G, NULL, &err) == 0, "%s", err.message);
                CHECK(vit_train_backward_tokens(o->m, &ti, o->wi, dimage, G, &err) == 0, "%s", err.message);
            }
        } else {
            CHECK(0, "%s", err.message);
        }
    }
    free(dtext), free(dimage);
    tower_cache_free(&ti), tower_cache_free(&tt);
    return v;
}

static const char *const COCA_PARAMS[] = {
    "text_decoder.text_projection", "text_decoder.ln_final.weight", "text_decoder.resblocks.0.attn.in_proj_weight",
    "text_decoder.resblocks.0.mlp.c_fc.bias", "text_decoder.cross_attn.0.attn.in_proj_weight",
    "text_decoder.cross_attn.0.attn.in_proj_bias", "text_decoder.cross_attn.0.ln_1_kv.weight",
    "text_decoder.cross_attn.0.ln_1.bias", "text_decoder.cross_attn.0.attn.out_proj.weight",
    "text_decoder.cross_attn.0.mlp.c_proj.weight", "cls_emb", "positional_embedding", "transformer.resblocks.0.attn.in_proj_weight",
    "ln_final.weight", "text_projection", "visual.attn_pool.query", "visual.attn_pool.attn.v_proj_weight", "visual.ln_post.bias",
    "visual.transformer.resblocks.0.mlp.c_proj.weight",
};

static void check_coca_grad(void) {
    clipc_error err;
    clipc_model *m = clipc_model_init("coca-tiny", 5, &err);
    CHECK(m != NULL, "%s", m ? "" : err.message);
    if (!m) return;
    const clipc_config *c = clipc_model_config(m);
    int n = 2, R = c->image_resolution, E = c->embed_dim, ctx = c->context_length;
    float *px = malloc((size_t)n * 3 * R * R * sizeof *px), *wi = malloc((size_t)n * E * sizeof *wi);
    float *wt = malloc((size_t)n * E * sizeof *wt), *G = calloc(m->table.total, sizeof *G);
    int32_t *tokens = malloc((size_t)n * ctx * sizeof *tokens);
    clipc_tokenizer *tok = clipc_tokenizer_new(&err);
    /* a text with "!" (id 0 inside it: hidden from the CLS row, ignored as a target) and a full-length one */
    CHECK(tok && clipc_tokenize(tok, "a dog!!", ctx, 1, tokens, &err) == 0 &&
              clipc_tokenize(tok, "a photo of a cat sitting on a red chair near the window", ctx, 1, tokens + ctx, &err) == 0,
          "%s", err.message);
    clipc_tokenizer_free(tok);
    rng r;
    rng_seed(&r, 6);
    for (int i = 0; i < n * 3 * R * R; i++) px[i] = (float)rng_normal(&r);
    for (int i = 0; i < n * E; i++) wi[i] = (float)rng_normal(&r), wt[i] = (float)rng_normal(&r);
    for (int i = 0; i < m->table.count; i++)
        if (m->table.items[i].ndim == 1)
            for (size_t j = 0; j < m->table.items[i].numel; j++) m->params[m->table.items[i].offset + j] += 0.1f * (float)rng_normal(&r);
    coca_objective o = {m, px, wi, wt, tokens, n, 0.7f};
    coca_objective_value(&o, G);
    double worst = 0, scale = 0;
    int checked = 0;
    for (size_t k = 0; k < sizeof COCA_PARAMS / sizeof *COCA_PARAMS; k++) {
        const param_spec *p = params_find(&m->table, COCA_PARAMS[k]);
        CHECK(p != NULL, "no parameter %s", COCA_PARAMS[k]);
        /* the vocabulary projection: the columns of the targets; elsewhere the first floats */
        for (size_t j = 0; p && j < p->numel && j < 20; j++) {
            size_t at = j;
            if (!strcmp(COCA_PARAMS[k], "text_decoder.text_projection")) at = (j % E) * c->vocab_size + (size_t)tokens[1 + j / E];
            /* embeddings are small (std 0.01) and pass through LayerNorm: a smaller step stays in the linear regime */
            bool small = p->init_std <= 0.02f && p->init == PI_NORMAL;
            float *x = m->params + p->offset + at, keep = *x, h = (small ? 1e-3f : 1e-2f) * fmaxf(1.0f, fabsf(keep));
            *x = keep + h;
            double up = coca_objective_value(&o, NULL);
            *x = keep - h;
            double down = coca_objective_value(&o, NULL);
            *x = keep;
            double fd = (up - down) / (2 * h), an = G[p->offset + at];
            if (getenv("CLIPC_DEBUG_FD") && fabs(fd - an) > 1e-2 * fmax(1, fabs(an)))
                printf("    %s[%zu]: fd %.5g analytic %.5g\n", COCA_PARAMS[k], at, fd, an);
            worst = fmax(worst, fabs(fd - an));
            scale = fmax(scale, fabs(an));
            checked++;
        }
    }
    CHECK(worst <= 2e-3 * fmax(scale, 1e-3), "CoCa training (decoder, cross-attention, CLS text tower, pooler): %d gradients "
          "vs finite differences: max diff %.3g (scale %.3g)", checked, worst, scale);
    printf("  CoCa caption + contrastive objective: %d gradients vs finite differences, max diff %.2g of %.2g\n", checked,
           worst, scale);
    free(px), free(wi), free(wt), free(G), free(tokens);
    clipc_model_free(m);
}

/* The trainer's loss and gradients on OpenCLIP's modules' own (PyTorch autograd, tests/data/coca/train):
 * 1 x InfoNCE + 2 x the next-token cross-entropy. */
static void check_against_pytorch(void) {
    clipc_error err;
    const char *dir = DATA "/train";
    char path[256];
    snprintf(path, sizeof path, "%s/open_clip_model.safetensors", dir);
    clipc_model *m = clipc_model_load(path, &err);
    CHECK(m != NULL, "%s", m ? "" : err.message);
    npy_array images, tokens;
    st_file ref;
    snprintf(path, sizeof path, "%s/grads.safetensors", dir);
    if (!m || npy_read(DATA "/train/images.npy", &images, &err) || npy_read(DATA "/train/tokens.npy", &tokens, &err) ||
        st_open(path, &ref, &err)) {
        CHECK(0, "%s", err.message);
        clipc_model_free(m);
        return;
    }
    const clipc_config *c = clipc_model_config(m);
    train_options o = {.loss = LOSS_CLIP, .batch = 2, .accum = 1, .lr = 1e-4f, .beta1 = 0.9f, .beta2 = 0.98f, .eps = 1e-6f};
    trainer t;
    loss_metrics lm;
    CHECK(trainer_init(&t, m, &o, NULL, &err) == 0 && trainer_compute_grads(&t, images.data, tokens.data, &lm, &err) == 0,
          "%s", err.message);
    char *want_loss = st_metadata_get(&ref, "loss"), *rows_s = st_metadata_get(&ref, "token_rows");
    char *cols_s = st_metadata_get(&ref, "projection_columns");
    double wl = want_loss ? atof(want_loss) : 0;
    CHECK(fabs(lm.loss - wl) <= 1e-4 * fabs(wl), "CoCa loss %.7g, PyTorch's %.7g", lm.loss, wl);
    cJSON *rows = cJSON_Parse(rows_s ? rows_s : "[]"), *cols = cJSON_Parse(cols_s ? cols_s : "[]");
    double worst = 0;
    int compared = 0, tensors = 0;
    const char *worst_name = "";
    for (int i = 0; i < m->table.count; i++) {
        const param_spec *p = &m->table.items[i];
        char name[160];
        bool same = !strncmp(p->name, "visual.", 7) || !strncmp(p->name, "text_decoder.", 13) || !strcmp(p->name, "logit_scale");
        snprintf(name, sizeof name, "%s%s", same ? "" : "text.", p->name);
        /* the pooler as wide as the image tower: PyTorch keeps its q, k, v in one in_proj_weight */
        size_t from = 0;
        static const char letters[] = "qkv";
        const char *qkv = strstr(name, "attn_pool.attn.") ? strchr(letters, name[strlen("visual.attn_pool.attn.")]) : NULL;
        if (qkv && strstr(name, "_proj_weight") && !st_find(&ref, name)) {
            from = (size_t)(qkv - letters) * p->numel;
            snprintf(name, sizeof name, "visual.attn_pool.attn.in_proj_weight");
        }
        const st_tensor *g = st_find(&ref, name);
        CHECK(g != NULL, "no reference gradient for %s", name);
        if (!g) continue;
        size_t count = from || qkv ? p->numel : g->nbytes / 4;
        float *all = malloc(g->nbytes), *want = all + from;
        st_to_f32(g, all);
        const float *got = t.grads + p->offset;
        double scale = 0, diff = 0;
        for (size_t k = 0; k < count; k++) scale = fmax(scale, fabs(want[k]));
        for (size_t k = 0; k < count; k++) {
            size_t at = k; /* the vocabulary-sized tensors are stored at the rows / columns the texts use */
            if (!strcmp(name, "text.token_embedding.weight")) at = (size_t)cJSON_GetArrayItem(rows, (int)(k / c->text_width))->valueint * c->text_width + k % c->text_width;
            if (!strcmp(name, "text_decoder.text_projection")) {
                int nc = cJSON_GetArraySize(cols);
                at = (k / nc) * c->vocab_size + (size_t)cJSON_GetArrayItem(cols, (int)(k % nc))->valueint;
            }
            diff = fmax(diff, fabs(got[at] - want[k]));
        }
        double rel = diff / fmax(scale, 1e-6);
        if (scale > 1e-6 && rel > worst) worst = rel, worst_name = p->name;
        compared += (int)count, tensors++;
        free(all);
    }
    CHECK(worst <= 1e-4, "CoCa gradients: worst %s at %.3g of its largest", worst_name, worst);
    printf("  CoCa training step vs PyTorch autograd: loss %.7g (PyTorch %.7g); %d gradients of %d tensors, worst "
           "%.2g of the tensor's largest (%s)\n", lm.loss, wl, compared, tensors, worst, worst_name);
    free(want_loss), free(rows_s), free(cols_s);
    cJSON_Delete(rows), cJSON_Delete(cols);
    trainer_free(&t);
    st_close(&ref);
    npy_free(&images), npy_free(&tokens);
    clipc_model_free(m);
}

/* The shipped CoCa names the class of Fashion-MNIST test images in its greedy captions, and
 * `clipc caption` without -m uses it. */
static void check_shipped(void) {
    clipc_error err;
    clipc_model *m = clipc_model_load("models/clipc-fmnist-coca.safetensors", &err);
    CHECK(m != NULL, "the shipped CoCa: %s", m ? "" : err.message);
    if (!m) return;
    image_set set;
    if (image_set_open("fashion-mnist", "test", NULL, NULL, &set, &err)) {
        CHECK(0, "%s", err.message);
        clipc_model_free(m);
        return;
    }
    int n = 200, R = clipc_model_config(m)->image_resolution, named = 0, misspelt = 0;
    float *px = malloc((size_t)n * 3 * R * R * sizeof *px);
    int32_t *ids[200];
    int lens[200];
    clipc_caption_options o;
    clipc_caption_defaults(&o);
    o.beams = 1, o.top_k = 1;
    clipc_tokenizer *tok = clipc_tokenizer_new(&err);
    CHECK(px && tok && image_set_pixels_batch(&set, NULL, 0, n, m, px, &err) == 0 && clipc_caption(m, px, n, &o, ids, lens, &err) == 0,
          "%s", err.message);
    for (int i = 0; tok && i < n; i++) {
        char *text = clipc_tokenizer_decode(tok, ids[i], lens[i], &err), *norm = text ? caption_normalize(text) : NULL;
        char padded[512];
        snprintf(padded, sizeof padded, " %s ", norm ? norm : "");
        bool hit = false;
        for (int k = 0; k < 4 && !hit; k++) {
            char *syn = caption_normalize(fmnist_synonym(set.labels[i], k)), want[128];
            snprintf(want, sizeof want, " %s ", syn ? syn : "?");
            hit = syn && strstr(padded, want);
            free(syn);
        }
        named += hit;
        misspelt += strstr(padded, " aan ") != NULL; /* the old caption generator's "a photo of aan ankle boot." */
        if (i < 3) printf("  shipped CoCa, test image %d (%s): \"%s\"\n", i, set.class_names[set.labels[i]], text ? text : "?");
        free(text), free(norm), free(ids[i]);
    }
    CHECK(named >= n * 85 / 100, "the shipped CoCa's greedy captions name the class of %d of %d test images (85%% wanted)",
          named, n);
    CHECK(misspelt == 0, "%d of %d greedy captions say 'aan'", misspelt, n);
    printf("  shipped CoCa: greedy captions name the class of %d of the first %d test images\n", named, n);
    /* clipc caption with no -m: the shipped model */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf /tmp/clipc_shipped_%d && %s export-images --limit 1 --out /tmp/clipc_shipped_%d >/dev/null 2>&1 && "
             "env -u CLIPC_CAPTION_MODEL %s caption /tmp/clipc_shipped_%d/*/*.png | grep -q 'ankle boot\\|boot'; rc=$?; "
             "rm -rf /tmp/clipc_shipped_%d; exit $rc", (int)getpid(), clipc_binary, (int)getpid(), clipc_binary, (int)getpid(),
             (int)getpid());
    CHECK(run_cmd(cmd) == 0, "clipc caption without -m captions the first test image (an ankle boot) with the shipped CoCa");
    clipc_tokenizer_free(tok);
    free(px);
    image_set_free(&set);
    clipc_model_free(m);
}

/* A random-init full-size coca_ViT-B-32 (253M parameters) made by OpenCLIP at test time
 * (tools/ref/gen_coca_b32.py; scripts/test.sh builds it in the reference venv and names
 * the folder in $CLIPC_COCA_B32): embeddings, logits, greedy and beam-search captions. */
static void check_b32(void) {
    const char *dir = getenv("CLIPC_COCA_B32");
    if (!dir || !*dir) {
        printf("  coca_ViT-B-32 against OpenCLIP: not run (no $CLIPC_COCA_B32; scripts/test.sh makes it)\n");
        return;
    }
    clipc_error err;
    char path[600];
    snprintf(path, sizeof path, "%s/open_clip_model.safetensors", dir);
    clipc_model *m = clipc_model_load(path, &err);
    CHECK(m != NULL, "coca_ViT-B-32: %s", m ? "" : err.message);
    npy_array images, tokens;
    if (!m || read_case_npy(dir, "images", &images, &err) || read_case_npy(dir, "tokens", &tokens, &err)) {
        CHECK(0, "%s", err.message);
        clipc_model_free(m);
        return;
    }
    const clipc_config *c = clipc_model_config(m);
    CHECK(c->pool_queries == 256 && c->decoder_layers == 12 && c->vision_width == 768 && c->embed_dim == 512,
          "coca_ViT-B-32's shape: %d queries, %d decoder layers", c->pool_queries, c->decoder_layers);
    printf("  coca_ViT-B-32 (%zu parameters):\n", clipc_model_param_count(m));
    check_embeddings(dir, m, &images, &tokens);
    check_logits(dir, m, &images, &tokens);
    check_generation(dir, m, &images);
    npy_free(&images), npy_free(&tokens);
    clipc_model_free(m);
    /* the small CoCa as OpenCLIP's torch.save file (open_clip_pytorch_model.bin): OpenCLIP's outputs again */
    snprintf(path, sizeof path, "%s/small/open_clip_pytorch_model.bin", dir);
    m = clipc_model_load(path, &err);
    CHECK(m != NULL, "OpenCLIP's CoCa as a PyTorch file: %s", m ? "" : err.message);
    if (m && read_case_npy(DATA, "images", &images, &err) == 0 && read_case_npy(DATA, "tokens", &tokens, &err) == 0) {
        printf("  the small CoCa read from open_clip_pytorch_model.bin:\n");
        check_embeddings(DATA, m, &images, &tokens);
        check_generation(DATA, m, &images);
        npy_free(&images), npy_free(&tokens);
    }
    clipc_model_free(m);
}

void test_coca(void) {
    check_b32();
    check_shipped();
    check_against_pytorch();
    check_image_grad();
    check_coca_grad();
    check_metrics();
    clipc_error err;
    clipc_model *m = clipc_model_load(DATA "/open_clip_model.safetensors", &err);
    CHECK(m != NULL, "%s", m ? "" : err.message);
    check_decode();
    if (!m) return;
    CHECK(!strcmp(clipc_model_family_name(m), "CoCa"), "family %s", clipc_model_family_name(m));
    npy_array images, tokens;
    if (npy_read(DATA "/images.npy", &images, &err) || npy_read(DATA "/tokens.npy", &tokens, &err)) {
        CHECK(0, "%s", err.message);
        clipc_model_free(m);
        return;
    }
    check_embeddings(DATA, m, &images, &tokens);
    check_logits(DATA, m, &images, &tokens);
    check_generation(DATA, m, &images);
    check_sampling(m, &images);
    /* at bf16 the captions' first tokens still follow the fp32 ones (random weights: later ones may drift) */
    clipc_caption_options greedy;
    clipc_caption_defaults(&greedy);
    greedy.beams = 1, greedy.top_k = 1;
    int32_t *c32[2], *c16[2];
    int l32[2], l16[2];
    CHECK(clipc_caption(m, images.data, 2, &greedy, c32, l32, &err) == 0, "%s", err.message);
    CHECK(clipc_model_set_precision(m, CLIPC_BF16, &err) == 0 && clipc_caption(m, images.data, 2, &greedy, c16, l16, &err) == 0,
          "%s", err.message);
    CHECK(c32[0][1] == c16[0][1] && c32[1][1] == c16[1][1], "bf16 captions start as the fp32 ones");
    clipc_model_set_precision(m, CLIPC_FP32, &err);
    check_cli(m);
    check_eval(m);
    for (int i = 0; i < 2; i++) free(c32[i]), free(c16[i]);
    /* a model that is not CoCa has no captions */
    clipc_model *clip = clipc_model_init("tiny", 1, &err);
    int32_t *ids[1];
    int lens[1];
    CHECK(clip && clipc_caption(clip, images.data, 1, NULL, ids, lens, &err) == -1 && strstr(err.message, "CoCa"),
          "captions from a CLIP model are refused: %s", err.message);
    clipc_model_free(clip);
    npy_free(&images), npy_free(&tokens);
    clipc_model_free(m);
}
