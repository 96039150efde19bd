/* state.c — training checkpoints: one safetensors file holding the model
 * (OpenAI naming, so `clipc embed/classify` load it as it is), AdamW's two
 * moments per parameter ("optimizer.exp_avg.NAME", "optimizer.exp_avg_sq.NAME")
 * and the step and options in the metadata. Written atomically (temporary
 * file, fsync, rename): a crash leaves the previous checkpoint intact. */
#include "train.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int train_checkpoint_save(const trainer *t, const char *path, uint64_t seed, clipc_error *err) {
    const clipc_model *m = t->m;
    int n = m->table.count;
    st_out_tensor *extra = calloc((size_t)n * 2, sizeof *extra);
    char (*names)[128] = calloc((size_t)n * 2, sizeof *names);
    if (!extra || !names) {
        free(extra);
        free(names);
        return clipc_fail(err, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        const param_spec *p = &m->table.items[i];
        for (int k = 0; k < 2; k++) {
            st_out_tensor *e = &extra[2 * i + k];
            snprintf(names[2 * i + k], 128, "optimizer.%s.%s", k ? "exp_avg_sq" : "exp_avg", p->name);
            e->name = names[2 * i + k];
            e->ndim = p->ndim;
            memcpy(e->shape, p->shape, sizeof p->shape);
            e->data = (k ? t->opt.v : t->opt.m) + p->offset;
            e->dtype = ST_F32;
        }
    }
    const train_options *o = &t->o;
    char v[14][64];
    const char *keys[14] = {"train_step", "train_seed", "train_loss", "train_batch", "train_accum", "train_lr",
                            "train_weight_decay", "train_warmup", "train_total_steps", "train_grad_clip",
                            "train_lr_temperature", "train_freeze", "train_eval_every", "train_eval_limit"};
    snprintf(v[0], 64, "%ld", t->opt.step);
    snprintf(v[1], 64, "%llu", (unsigned long long)seed);
    snprintf(v[2], 64, "%s", o->loss == LOSS_SIGLIP ? "siglip" : "clip");
    snprintf(v[3], 64, "%d", o->batch);
    snprintf(v[4], 64, "%d", o->accum);
    snprintf(v[5], 64, "%.9g", o->lr);
    snprintf(v[6], 64, "%.9g", o->weight_decay);
    snprintf(v[7], 64, "%ld", o->warmup);
    snprintf(v[8], 64, "%ld", o->total_steps);
    snprintf(v[9], 64, "%.9g", o->grad_clip);
    snprintf(v[10], 64, "%.9g", o->lr_temperature);
    snprintf(v[11], 64, "%s", train_freeze_name(o->freeze));
    snprintf(v[12], 64, "%ld", o->eval_every);
    snprintf(v[13], 64, "%ld", o->eval_limit);
    const char *vals[14];
    for (int i = 0; i < 14; i++) vals[i] = v[i];
    int rc = model_save_with(m, path, "F32", extra, 2 * n, keys, vals, o->eval_every > 0 ? 14 : 12, err);
    free(extra);
    free(names);
    return rc;
}

static int meta_long(const st_file *f, const char *key, long *out, clipc_error *err) {
    char *s = st_metadata_get(f, key);
    if (!s) return clipc_fail(err, "not a clipc training checkpoint (no '%s')", key);
    *out = strtol(s, NULL, 10);
    free(s);
    return 0;
}

int train_checkpoint_load(const char *path, clipc_model **model, train_options *o, uint64_t *seed, long *step,
                          trainer *t, const dist *d, clipc_error *err) {
    clipc_model *m = clipc_model_load(path, err);
    if (!m) return -1;
    st_file f;
    if (st_open(path, &f, err)) {
        clipc_model_free(m);
        return -1;
    }
    long v[6];
    const char *keys[6] = {"train_step", "train_seed", "train_batch", "train_accum", "train_warmup", "train_total_steps"};
    int rc = 0;
    for (int i = 0; i < 6 && rc == 0; i++) rc = meta_long(&f, keys[i], &v[i], err);
    char *loss = rc ? NULL : st_metadata_get(&f, "train_loss"), *lr = st_metadata_get(&f, "train_lr"),
         *wd = st_metadata_get(&f, "train_weight_decay"), *clip = st_metadata_get(&f, "train_grad_clip");
    if (rc == 0 && (!loss || !lr || !wd || !clip)) rc = clipc_fail(err, "not a clipc training checkpoint");
    if (rc == 0) {
        *step = v[0];
        *seed = (uint64_t)v[1];
        o->batch = (int)v[2];
        o->accum = (int)v[3];
        o->warmup = v[4];
        o->total_steps = v[5];
        o->loss = !strcmp(loss, "siglip") ? LOSS_SIGLIP : LOSS_CLIP;
        o->lr = strtof(lr, NULL);
        o->weight_decay = strtof(wd, NULL);
        o->grad_clip = strtof(clip, NULL);
        char *ee = st_metadata_get(&f, "train_eval_every"); /* optional: older checkpoints lack it */
        o->eval_every = ee ? strtol(ee, NULL, 10) : 0;
        free(ee);
        char *el = st_metadata_get(&f, "train_eval_limit");
        o->eval_limit = el ? strtol(el, NULL, 10) : 0;
        free(el);
        char *lt = st_metadata_get(&f, "train_lr_temperature"), *fz = st_metadata_get(&f, "train_freeze");
        o->lr_temperature = lt ? strtof(lt, NULL) : o->lr; /* older checkpoints: one learning rate */
        o->freeze = !fz || !strcmp(fz, "none") ? FREEZE_NONE : !strcmp(fz, "image") ? FREEZE_IMAGE
                  : !strcmp(fz, "text")           ? FREEZE_TEXT
                                                  : -1;
        if (o->freeze < 0) rc = clipc_fail(err, "unknown train_freeze '%s' in the checkpoint", fz);
        free(lt), free(fz);
        if (rc == 0) rc = trainer_init(t, m, o, d, err);
    }
    for (int i = 0; i < m->table.count && rc == 0; i++) {
        const param_spec *p = &m->table.items[i];
        for (int k = 0; k < 2 && rc == 0; k++) {
            char name[160];
            snprintf(name, sizeof name, "optimizer.%s.%s", k ? "exp_avg_sq" : "exp_avg", p->name);
            const st_tensor *tt = st_find(&f, name);
            if (!tt || tt->dtype != ST_F32 || tt->nbytes != p->numel * 4)
                rc = clipc_fail(err, "checkpoint lacks a valid '%s'", name);
            else
                st_to_f32(tt, (k ? t->opt.v : t->opt.m) + p->offset);
        }
    }
    if (rc == 0) t->opt.step = *step;
    free(loss), free(lr), free(wd), free(clip);
    st_close(&f);
    if (rc) {
        if (t->grads) trainer_free(t);
        clipc_model_free(m);
        return clipc_fail_prefix(err, path);
    }
    *model = m;
    return 0;
}
