/* pytorch.c — the zip archives torch.save writes (.pt, .pth, .bin), read
 * without Python.
 *
 * Such an archive holds NAME/data.pkl, a pickle of the state dict, and one
 * entry NAME/data/KEY per tensor storage. A TorchScript archive (torch.jit.save,
 * as OpenAI publishes its models) has the same layout, its data.pkl a tree
 * of module objects whose tensor attributes, named by their paths, are the
 * state dict. The pickle is a program for a
 * small stack machine; Python's unpickler will import and call any global
 * it names, which is how a malicious checkpoint runs code. This one is a
 * restricted unpickler: it knows the opcodes torch.save emits (protocol 2,
 * and the protocol 4 framing) and exactly these globals —
 *   collections.OrderedDict              an empty dict
 *   torch._utils._rebuild_tensor_v2      (storage, offset, size, stride, ...)
 *   torch._utils._rebuild_parameter      (tensor, requires_grad, hooks)
 *   torch.{Float,Half,BFloat16,Long,Int}Storage   storage types
 *   __torch__.*                          TorchScript module classes: an
 *                                        object whose attributes are data
 *   torch.jit._pickle.build_*list        a list, as it is
 * and refuses any other global, opcode or shape of data, naming it. Nothing
 * is ever called: "calling" an allowed global builds a value of ours.
 *
 * The result fills the same st_file as a .safetensors file (tensors by
 * name, dtype, shape, bytes), so the checkpoint loader is shared. Every
 * count and size is bounded before it is allocated: the pickle by its
 * length, storages by their zip entries (which must be stored, not
 * compressed, as torch writes them, so no entry exceeds the file). */
#include "../internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zip.h>
#include <zlib.h>

#define MAX_VALUES (1 << 22)
#define MAX_MEMO (1 << 22)

enum vkind { V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_TUPLE, V_LIST, V_DICT, V_GLOBAL, V_STORAGE, V_TENSOR, V_MARK,
             V_OBJECT /* a TorchScript module: its attributes as dict items */ };

/* Allowed globals. */
enum global_id { G_ORDERED_DICT, G_REBUILD_TENSOR, G_REBUILD_PARAMETER, G_STORAGE, G_TORCH_CLASS, G_BUILD_LIST };

typedef struct pval {
    int kind;
    int64_t i;           /* V_INT, V_BOOL; V_GLOBAL: enum global_id; V_STORAGE: numel */
    char *s;             /* V_STR; V_STORAGE: key */
    int dtype;           /* V_GLOBAL (storage type) and V_STORAGE, V_TENSOR: enum st_dtype */
    struct pval **items; /* tuple/list elements; dict: key, value, key, value ... */
    int n, cap;
    /* V_TENSOR */
    struct pval *storage;
    int64_t offset, ndim, shape[8], stride[8];
} pval;

typedef struct unpickler {
    const unsigned char *p, *end;
    pval **all;          /* every value made, for freeing */
    int n_all, cap_all;
    pval **stack;
    int sp, stack_cap;
    pval **memo;
    int memo_cap, memo_len; /* memo_len: entries set (MEMOIZE's next index) */
    clipc_error *err;
    const char *path;
} unpickler;

static pval *new_val(unpickler *u, int kind) {
    if (u->n_all >= MAX_VALUES) {
        clipc_fail(u->err, "%s: data.pkl makes more than %d values", u->path, MAX_VALUES);
        return NULL;
    }
    if (u->n_all == u->cap_all) {
        int cap = u->cap_all ? 2 * u->cap_all : 1024;
        pval **all = realloc(u->all, (size_t)cap * sizeof *all);
        if (!all) return clipc_fail(u->err, "out of memory"), NULL;
        u->all = all, u->cap_all = cap;
    }
    pval *v = calloc(1, sizeof *v);
    if (!v) return clipc_fail(u->err, "out of memory"), NULL;
    v->kind = kind;
    u->all[u->n_all++] = v;
    return v;
}

static int push(unpickler *u, pval *v) {
    if (!v) return -1;
    if (u->sp == u->stack_cap) {
        int cap = u->stack_cap ? 2 * u->stack_cap : 256;
        if (cap > MAX_VALUES) return clipc_fail(u->err, "%s: data.pkl's stack is too deep", u->path);
        pval **s = realloc(u->stack, (size_t)cap * sizeof *s);
        if (!s) return clipc_fail(u->err, "out of memory");
        u->stack = s, u->stack_cap = cap;
    }
    u->stack[u->sp++] = v;
    return 0;
}

static pval *pop(unpickler *u) {
    if (u->sp == 0 || u->stack[u->sp - 1]->kind == V_MARK) {
        clipc_fail(u->err, "%s: data.pkl pops an empty stack (not a torch.save pickle?)", u->path);
        return NULL;
    }
    return u->stack[--u->sp];
}

static pval *top(unpickler *u) {
    if (u->sp == 0 || u->stack[u->sp - 1]->kind == V_MARK) {
        clipc_fail(u->err, "%s: data.pkl reads an empty stack", u->path);
        return NULL;
    }
    return u->stack[u->sp - 1];
}

static int add_item(unpickler *u, pval *c, pval *x) {
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 8;
        pval **items = realloc(c->items, (size_t)cap * sizeof *items);
        if (!items) return clipc_fail(u->err, "out of memory");
        c->items = items, c->cap = cap;
    }
    c->items[c->n++] = x;
    return 0;
}

/* The values above the topmost mark; *first indexes the first of them. */
static int since_mark(unpickler *u, int *first) {
    for (int i = u->sp - 1; i >= 0; i--)
        if (u->stack[i]->kind == V_MARK) {
            *first = i + 1;
            return 0;
        }
    return clipc_fail(u->err, "%s: data.pkl has no mark where one is needed", u->path);
}

static int need(unpickler *u, size_t n) {
    if ((size_t)(u->end - u->p) < n) return clipc_fail(u->err, "%s: data.pkl is truncated", u->path);
    return 0;
}

static uint64_t le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static int memo_put(unpickler *u, uint64_t idx) {
    pval *v = top(u);
    if (!v) return -1;
    if (idx >= MAX_MEMO) return clipc_fail(u->err, "%s: data.pkl memo index %llu is too large", u->path, (unsigned long long)idx);
    if ((int)idx >= u->memo_cap) {
        int cap = u->memo_cap ? u->memo_cap : 256;
        while (cap <= (int)idx) cap *= 2;
        pval **m = realloc(u->memo, (size_t)cap * sizeof *m);
        if (!m) return clipc_fail(u->err, "out of memory");
        memset(m + u->memo_cap, 0, (size_t)(cap - u->memo_cap) * sizeof *m);
        u->memo = m, u->memo_cap = cap;
    }
    if (!u->memo[idx]) u->memo_len++;
    u->memo[idx] = v;
    return 0;
}

static int memo_get(unpickler *u, uint64_t idx) {
    if (idx >= (uint64_t)u->memo_cap || !u->memo[idx])
        return clipc_fail(u->err, "%s: data.pkl reads memo %llu before writing it", u->path, (unsigned long long)idx);
    return push(u, u->memo[idx]);
}

static int string(unpickler *u, size_t len) {
    if (need(u, len)) return -1;
    pval *v = new_val(u, V_STR);
    if (!v || !(v->s = malloc(len + 1))) return v ? clipc_fail(u->err, "out of memory") : -1;
    memcpy(v->s, u->p, len);
    v->s[len] = '\0';
    u->p += len;
    return push(u, v);
}

/* "module name" to an allowed global, or a refusal naming it. */
static int global(unpickler *u, const char *module, const char *name) {
    static const struct { const char *module, *name; int id, dtype; } allowed[] = {
        {"collections", "OrderedDict", G_ORDERED_DICT, 0},
        {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_TENSOR, 0},
        {"torch._utils", "_rebuild_parameter", G_REBUILD_PARAMETER, 0},
        {"torch", "FloatStorage", G_STORAGE, ST_F32},
        {"torch", "HalfStorage", G_STORAGE, ST_F16},
        {"torch", "BFloat16Storage", G_STORAGE, ST_BF16},
        {"torch", "LongStorage", G_STORAGE, ST_I64},
        {"torch", "IntStorage", G_STORAGE, ST_I32},
    };
    if (!strncmp(module, "__torch__.", 10) || !strcmp(module, "__torch__")) { /* a class to hold data, never called */
        pval *v = new_val(u, V_GLOBAL);
        if (!v) return -1;
        v->i = G_TORCH_CLASS;
        return push(u, v);
    }
    if (!strcmp(module, "torch.jit._pickle") && !strncmp(name, "build_", 6) && strlen(name) > 10 &&
        !strcmp(name + strlen(name) - 4, "list")) {
        pval *v = new_val(u, V_GLOBAL);
        if (!v) return -1;
        v->i = G_BUILD_LIST;
        return push(u, v);
    }
    for (size_t k = 0; k < sizeof allowed / sizeof *allowed; k++)
        if (!strcmp(module, allowed[k].module) && !strcmp(name, allowed[k].name)) {
            pval *v = new_val(u, V_GLOBAL);
            if (!v) return -1;
            v->i = allowed[k].id;
            v->dtype = allowed[k].dtype;
            return push(u, v);
        }
    return clipc_fail(u->err, "%s: the pickle names the global '%.60s.%.60s', which a checkpoint has no business with: refused",
                      u->path, module, name);
}

static bool is_int(const pval *v) { return v && (v->kind == V_INT || v->kind == V_BOOL); }

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, metadata]) */
static pval *rebuild_tensor(unpickler *u, const pval *args) {
    if (args->n < 4 || args->items[0]->kind != V_STORAGE || !is_int(args->items[1]) ||
        args->items[2]->kind != V_TUPLE || args->items[3]->kind != V_TUPLE ||
        args->items[2]->n != args->items[3]->n || args->items[2]->n > 8) {
        clipc_fail(u->err, "%s: a _rebuild_tensor_v2 call with arguments torch.save does not write", u->path);
        return NULL;
    }
    pval *t = new_val(u, V_TENSOR);
    if (!t) return NULL;
    t->storage = args->items[0];
    t->dtype = t->storage->dtype;
    t->offset = args->items[1]->i;
    t->ndim = args->items[2]->n;
    for (int d = 0; d < t->ndim; d++) {
        const pval *sz = args->items[2]->items[d], *st = args->items[3]->items[d];
        if (!is_int(sz) || !is_int(st) || sz->i < 0 || st->i < 0 || sz->i > ((int64_t)1 << 40) || st->i > ((int64_t)1 << 40)) {
            clipc_fail(u->err, "%s: a tensor with a bad size or stride", u->path);
            return NULL;
        }
        t->shape[d] = sz->i;
        t->stride[d] = st->i;
    }
    if (t->offset < 0 || t->offset > ((int64_t)1 << 40)) {
        clipc_fail(u->err, "%s: a tensor with a bad storage offset", u->path);
        return NULL;
    }
    return t;
}

static int reduce(unpickler *u) {
    pval *args = pop(u), *fn = args ? pop(u) : NULL;
    if (!fn) return -1;
    if (fn->kind != V_GLOBAL || args->kind != V_TUPLE)
        return clipc_fail(u->err, "%s: data.pkl calls something that is not an allowed function", u->path);
    if (fn->i == G_ORDERED_DICT) return push(u, new_val(u, V_DICT));
    if (fn->i == G_REBUILD_TENSOR) {
        pval *t = rebuild_tensor(u, args);
        return t ? push(u, t) : -1;
    }
    if (fn->i == G_BUILD_LIST) {
        if (args->n != 1 || args->items[0]->kind != V_LIST)
            return clipc_fail(u->err, "%s: a build_*list call without a list", u->path);
        return push(u, args->items[0]);
    }
    if (fn->i == G_REBUILD_PARAMETER) {
        if (args->n < 1 || args->items[0]->kind != V_TENSOR)
            return clipc_fail(u->err, "%s: a _rebuild_parameter call without a tensor", u->path);
        return push(u, args->items[0]);
    }
    return clipc_fail(u->err, "%s: data.pkl calls a storage type", u->path);
}

/* BINPERSID: ('storage', storage type, key, location, numel) */
static int persistent(unpickler *u) {
    pval *pid = pop(u);
    if (!pid) return -1;
    if (pid->kind != V_TUPLE || pid->n != 5 || pid->items[0]->kind != V_STR || strcmp(pid->items[0]->s, "storage") ||
        pid->items[1]->kind != V_GLOBAL || pid->items[1]->i != G_STORAGE || pid->items[2]->kind != V_STR ||
        !is_int(pid->items[4]) || pid->items[4]->i < 0)
        return clipc_fail(u->err, "%s: a persistent id that is not a torch storage", u->path);
    pval *s = new_val(u, V_STORAGE);
    if (!s) return -1;
    s->dtype = pid->items[1]->dtype;
    s->s = pid->items[2]->s; /* owned by the key string value */
    s->i = pid->items[4]->i;
    return push(u, s);
}

/* A tuple of stack[first..sp); the stack is then cut back to `keep`. */
static int make_tuple(unpickler *u, int first, int keep) {
    pval *t = new_val(u, V_TUPLE);
    if (!t) return -1;
    for (int i = first; i < u->sp; i++)
        if (add_item(u, t, u->stack[i])) return -1;
    u->sp = keep;
    return push(u, t);
}

/* Runs the pickle; *result is what STOP returns. */
static int run(unpickler *u, pval **result) {
    while (u->p < u->end) {
        unsigned char op = *u->p++;
        int first = 0, rc = 0;
        pval *v, *k, *c;
        switch (op) {
        case 0x80: rc = need(u, 1); u->p += rc ? 0 : 1; break;                         /* PROTO */
        case 0x95: rc = need(u, 8); u->p += rc ? 0 : 8; break;                         /* FRAME */
        case '.': *result = pop(u); return *result ? 0 : -1;                          /* STOP */
        case '(': rc = push(u, new_val(u, V_MARK)); break;                            /* MARK */
        case '}': rc = push(u, new_val(u, V_DICT)); break;                            /* EMPTY_DICT */
        case ']': rc = push(u, new_val(u, V_LIST)); break;                            /* EMPTY_LIST */
        case ')': rc = push(u, new_val(u, V_TUPLE)); break;                           /* EMPTY_TUPLE */
        case 'N': rc = push(u, new_val(u, V_NONE)); break;                            /* NONE */
        case 0x88: case 0x89:                                                          /* NEWTRUE, NEWFALSE */
            if ((v = new_val(u, V_BOOL))) v->i = op == 0x88;
            rc = push(u, v);
            break;
        case 'K': case 'M': case 'J': {                                                /* BININT1, BININT2, BININT */
            int n = op == 'K' ? 1 : op == 'M' ? 2 : 4;
            if ((rc = need(u, (size_t)n))) break;
            uint64_t x = le(u->p, n);
            u->p += n;
            if ((v = new_val(u, V_INT))) v->i = n == 4 ? (int64_t)(int32_t)x : (int64_t)x;
            rc = push(u, v);
            break;
        }
        case 0x8a: {                                                                   /* LONG1 */
            if ((rc = need(u, 1))) break;
            int n = *u->p++;
            if (n > 8 || (rc = need(u, (size_t)n))) {
                rc = rc ? rc : clipc_fail(u->err, "%s: data.pkl has an integer over 64 bits", u->path);
                break;
            }
            uint64_t x = n ? le(u->p, n) : 0;
            if (n && n < 8 && (u->p[n - 1] & 0x80)) x |= ~(uint64_t)0 << (8 * n); /* sign-extend */
            u->p += n;
            if ((v = new_val(u, V_INT))) v->i = (int64_t)x;
            rc = push(u, v);
            break;
        }
        case 'G': {                                                                    /* BINFLOAT (big-endian) */
            if ((rc = need(u, 8))) break;
            uint64_t x = 0;
            for (int i = 0; i < 8; i++) x = x << 8 | u->p[i];
            u->p += 8;
            if ((v = new_val(u, V_FLOAT))) memcpy(&v->i, &x, 8);
            rc = push(u, v);
            break;
        }
        case 'X': case 0x8c: {                                                         /* BINUNICODE, SHORT_BINUNICODE */
            int n = op == 'X' ? 4 : 1;
            if ((rc = need(u, (size_t)n))) break;
            size_t len = (size_t)le(u->p, n);
            u->p += n;
            rc = string(u, len);
            break;
        }
        case 'q': case 'r': {                                                          /* BINPUT, LONG_BINPUT */
            int n = op == 'q' ? 1 : 4;
            if ((rc = need(u, (size_t)n))) break;
            uint64_t idx = le(u->p, n);
            u->p += n;
            rc = memo_put(u, idx);
            break;
        }
        case 0x94: rc = memo_put(u, (uint64_t)u->memo_len); break;                    /* MEMOIZE */
        case 'h': case 'j': {                                                          /* BINGET, LONG_BINGET */
            int n = op == 'h' ? 1 : 4;
            if ((rc = need(u, (size_t)n))) break;
            uint64_t idx = le(u->p, n);
            u->p += n;
            rc = memo_get(u, idx);
            break;
        }
        case 'c': {                                                                    /* GLOBAL "module\nname\n" */
            const unsigned char *nl1 = memchr(u->p, '\n', (size_t)(u->end - u->p));
            const unsigned char *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(u->end - nl1 - 1)) : NULL;
            if (!nl2 || nl1 - u->p > 200 || nl2 - nl1 > 200) {
                rc = clipc_fail(u->err, "%s: data.pkl has a malformed GLOBAL", u->path);
                break;
            }
            char module[256], name[256];
            snprintf(module, sizeof module, "%.*s", (int)(nl1 - u->p), (const char *)u->p);
            snprintf(name, sizeof name, "%.*s", (int)(nl2 - nl1 - 1), (const char *)nl1 + 1);
            u->p = nl2 + 1;
            rc = global(u, module, name);
            break;
        }
        case 0x93: {                                                                   /* STACK_GLOBAL */
            pval *name = pop(u), *module = name ? pop(u) : NULL;
            if (!module) return -1;
            if (module->kind != V_STR || name->kind != V_STR)
                return clipc_fail(u->err, "%s: data.pkl has a malformed STACK_GLOBAL", u->path);
            rc = global(u, module->s, name->s);
            break;
        }
        case 't':                                                                      /* TUPLE */
            rc = since_mark(u, &first);
            if (rc == 0) rc = make_tuple(u, first, first - 1); /* the mark goes too */
            break;
        case 0x85: case 0x86: case 0x87: {                                             /* TUPLE1..3 */
            int n = op - 0x84;
            for (int i = 0; i < n; i++)
                if (u->sp - 1 - i < 0 || u->stack[u->sp - 1 - i]->kind == V_MARK)
                    return clipc_fail(u->err, "%s: data.pkl makes a tuple of missing values", u->path);
            rc = make_tuple(u, u->sp - n, u->sp - n);
            break;
        }
        case 'R': rc = reduce(u); break;                                               /* REDUCE */
        case 'Q': rc = persistent(u); break;                                           /* BINPERSID */
        case 0x81:                                                                     /* NEWOBJ */
            if (!(v = pop(u)) || !(c = pop(u))) return -1;
            if (c->kind != V_GLOBAL || c->i != G_TORCH_CLASS || v->kind != V_TUPLE)
                return clipc_fail(u->err, "%s: data.pkl makes an object of a class that is not a TorchScript module",
                                  u->path);
            rc = push(u, new_val(u, V_OBJECT));
            break;
        case 'b':                                                                      /* BUILD */
            /* a TorchScript module's attributes, or an OrderedDict's state
             * (state_dict()'s _metadata), which is dropped */
            if (!(v = pop(u)) || !(c = top(u))) return -1;
            if (c->kind == V_OBJECT && v->kind == V_DICT && c->n == 0) {
                c->items = v->items, c->n = v->n, c->cap = v->cap; /* the dict's items move to the object */
                v->items = NULL, v->n = v->cap = 0;
            } else if (c->kind != V_DICT) {
                return clipc_fail(u->err, "%s: data.pkl builds an object in a way torch does not: refused", u->path);
            }
            break;
        case 's':                                                                      /* SETITEM */
            if (!(v = pop(u)) || !(k = pop(u)) || !(c = top(u))) return -1;
            if (c->kind != V_DICT) return clipc_fail(u->err, "%s: data.pkl sets an item of a non-dict", u->path);
            rc = add_item(u, c, k) || add_item(u, c, v) ? -1 : 0;
            break;
        case 'u':                                                                      /* SETITEMS */
            if ((rc = since_mark(u, &first))) break;
            if (first < 2 || u->stack[first - 2]->kind != V_DICT || (u->sp - first) % 2)
                return clipc_fail(u->err, "%s: data.pkl sets items of a non-dict", u->path);
            c = u->stack[first - 2];
            for (int i = first; i < u->sp && rc == 0; i++) rc = add_item(u, c, u->stack[i]);
            u->sp = first - 1;
            break;
        case 'a':                                                                      /* APPEND */
            if (!(v = pop(u)) || !(c = top(u))) return -1;
            if (c->kind != V_LIST) return clipc_fail(u->err, "%s: data.pkl appends to a non-list", u->path);
            rc = add_item(u, c, v);
            break;
        case 'e':                                                                      /* APPENDS */
            if ((rc = since_mark(u, &first))) break;
            if (first < 2 || u->stack[first - 2]->kind != V_LIST)
                return clipc_fail(u->err, "%s: data.pkl appends to a non-list", u->path);
            c = u->stack[first - 2];
            for (int i = first; i < u->sp && rc == 0; i++) rc = add_item(u, c, u->stack[i]);
            u->sp = first - 1;
            break;
        default:
            return clipc_fail(u->err, "%s: data.pkl uses pickle opcode 0x%02x, which torch.save does not write: refused",
                              u->path, op);
        }
        if (rc) return -1;
    }
    return clipc_fail(u->err, "%s: data.pkl ends without STOP (truncated?)", u->path);
}

static void unpickler_free(unpickler *u) {
    for (int i = 0; i < u->n_all; i++) {
        if (u->all[i]->kind == V_STR) free(u->all[i]->s);
        free(u->all[i]->items);
        free(u->all[i]);
    }
    free(u->all);
    free(u->stack);
    free(u->memo);
}

/* ---- the archive ---------------------------------------------------------------- */

static size_t dtype_size(int dtype) {
    return dtype == ST_F32 || dtype == ST_I32 ? 4 : dtype == ST_I64 ? 8 : 2;
}

/* The bytes of entry `name`, which must be stored uncompressed. */
static unsigned char *read_entry(zip_t *z, const char *name, size_t *len, const char *path, clipc_error *err) {
    zip_stat_t st;
    if (zip_stat(z, name, 0, &st) != 0) {
        clipc_fail(err, "%s: the archive has no entry '%s'", path, name);
        return NULL;
    }
    if (!(st.valid & ZIP_STAT_SIZE) || !(st.valid & ZIP_STAT_COMP_METHOD) || st.comp_method != ZIP_CM_STORE) {
        clipc_fail(err, "%s: entry '%s' is compressed (torch.save stores its entries)", path, name);
        return NULL;
    }
    unsigned char *buf = malloc(st.size ? st.size : 1);
    zip_file_t *zf = buf ? zip_fopen(z, name, 0) : NULL;
    zip_int64_t got = zf ? zip_fread(zf, buf, st.size) : -1;
    if (zf) zip_fclose(zf);
    /* the entry's CRC-32, which libzip leaves unchecked on a read of exactly its size */
    if (got >= 0 && (zip_uint64_t)got == st.size && (st.valid & ZIP_STAT_CRC)) {
        uLong crc = crc32(0L, Z_NULL, 0);
        for (zip_uint64_t done = 0; done < st.size;) { /* crc32 takes at most 4 GiB a call */
            uInt n = st.size - done > (1u << 30) ? (1u << 30) : (uInt)(st.size - done);
            crc = crc32(crc, buf + done, n);
            done += n;
        }
        if (crc != st.crc) got = -1;
    }
    if (got < 0 || (zip_uint64_t)got != st.size) {
        free(buf);
        clipc_fail(err, buf ? "%s: entry '%s' could not be read (truncated archive?)" : "out of memory", path, name);
        return NULL;
    }
    *len = st.size;
    return buf;
}

/* The tensors of a state dict: the top dict, or its "state_dict" entry
 * (training checkpoints), or a TorchScript module tree. */
static const pval *state_dict_of(const pval *root) {
    if (root && root->kind == V_OBJECT) return root;
    if (!root || root->kind != V_DICT) return NULL;
    for (int i = 0; i + 1 < root->n; i += 2)
        if (root->items[i]->kind == V_STR && !strcmp(root->items[i]->s, "state_dict") && root->items[i + 1]->kind == V_DICT)
            return root->items[i + 1];
    return root;
}

typedef struct named {
    char name[256];
    const pval *t;
} named;

typedef struct named_list {
    named *items;
    int n, cap;
} named_list;

/* Every tensor under node with its state-dict name: a dict's keys are the
 * names (DataParallel's "module." dropped); a TorchScript module's tensor
 * attributes are named by their path from the root, as state_dict() does. */
static int collect(const pval *node, const char *prefix, int depth, int *budget, named_list *out, const char *path,
                   clipc_error *err) {
    if (depth > 64) return clipc_fail(err, "%s: modules nested more than 64 deep", path);
    for (int i = 0; i + 1 < node->n; i += 2) {
        /* the memo lets one module appear under many names: a visit budget
         * keeps a small pickle from naming exponentially many tensors */
        if (--*budget < 0) return clipc_fail(err, "%s: the module tree names more than %d entries", path, MAX_VALUES);
        const pval *key = node->items[i], *v = node->items[i + 1];
        if (v->kind != V_TENSOR && v->kind != V_OBJECT) continue; /* flags, sizes, training switches */
        if (key->kind != V_STR) return clipc_fail(err, "%s: a state dict key that is not a string", path);
        const char *k = depth == 0 && node->kind == V_DICT && !strncmp(key->s, "module.", 7) ? key->s + 7 : key->s;
        char name[256];
        if (strlen(prefix) + strlen(k) >= sizeof name - 1)
            return clipc_fail(err, "%s: a tensor name over %zu bytes", path, sizeof name - 2);
        if ((size_t)snprintf(name, sizeof name, "%s%s", prefix, k) >= sizeof name)
            return clipc_fail(err, "%s: a tensor name over %zu bytes", path, sizeof name - 1);
        if (v->kind == V_OBJECT) {
            if (node->kind != V_OBJECT) continue; /* objects count only inside a module tree */
            char sub[258];
            snprintf(sub, sizeof sub, "%s.", name); /* name < 256 bytes: fits */
            if (collect(v, sub, depth + 1, budget, out, path, err)) return -1;
            continue;
        }
        if (out->n == out->cap) {
            int cap = out->cap ? 2 * out->cap : 64;
            named *items = realloc(out->items, (size_t)cap * sizeof *items);
            if (!items) return clipc_fail(err, "out of memory");
            out->items = items, out->cap = cap;
        }
        snprintf(out->items[out->n].name, sizeof out->items[out->n].name, "%s", name);
        out->items[out->n++].t = v;
    }
    return 0;
}

/* The tensor's elements in C order into dst (strided storages are gathered). */
static void gather(const pval *t, const unsigned char *storage, unsigned char *dst, size_t esz) {
    int64_t idx[8] = {0};
    size_t numel = 1;
    for (int d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
    for (size_t e = 0; e < numel; e++) {
        int64_t off = t->offset;
        for (int d = 0; d < t->ndim; d++) off += idx[d] * t->stride[d];
        memcpy(dst + e * esz, storage + (size_t)off * esz, esz);
        for (int d = (int)t->ndim - 1; d >= 0; d--) {
            if (++idx[d] < t->shape[d]) break;
            idx[d] = 0;
        }
    }
}

int pt_open(const char *path, st_file *f, clipc_error *err) {
    memset(f, 0, sizeof *f);
    int zerr = 0;
    zip_t *z = zip_open(path, ZIP_RDONLY | ZIP_CHECKCONS, &zerr);
    if (!z) {
        zip_error_t ze;
        zip_error_init_with_code(&ze, zerr);
        int rc = clipc_fail(err, "%s: not a readable zip archive (%s)", path, zip_error_strerror(&ze));
        zip_error_fini(&ze);
        return rc;
    }
    /* NAME/data.pkl: NAME is whatever the archive was saved as */
    char prefix[512] = "";
    zip_int64_t entries = zip_get_num_entries(z, 0);
    bool found = false;
    for (zip_int64_t i = 0; i < entries && !found; i++) {
        const char *n = zip_get_name(z, (zip_uint64_t)i, 0);
        size_t len = n ? strlen(n) : 0;
        if (len >= 8 && len < sizeof prefix && !strcmp(n + len - 8, "data.pkl") && (len == 8 || n[len - 9] == '/') &&
            !memchr(n, '/', len - 9 > 0 ? len - 9 : 0)) {
            snprintf(prefix, sizeof prefix, "%.*s", (int)(len - 8), n);
            found = true;
        }
    }
    if (!found) {
        zip_close(z);
        return clipc_fail(err, "%s: a zip archive without data.pkl (not a torch.save checkpoint)", path);
    }
    char name[1024];
    snprintf(name, sizeof name, "%sdata.pkl", prefix);
    size_t pkl_len = 0;
    unsigned char *pkl = read_entry(z, name, &pkl_len, path, err);
    if (!pkl) {
        zip_close(z);
        return -1;
    }
    unpickler u = {.p = pkl, .end = pkl + pkl_len, .err = err, .path = path};
    pval *root = NULL;
    int rc = (long long)pkl_len > limit_of(LIMIT_PICKLE_BYTES)
                 ? clipc_fail(err, "%s: data.pkl is over %lld bytes (%s raises it)", path, limit_of(LIMIT_PICKLE_BYTES),
                              limit_env(LIMIT_PICKLE_BYTES))
                 : run(&u, &root);
    const pval *sd = rc == 0 ? state_dict_of(root) : NULL;
    if (rc == 0 && !sd) rc = clipc_fail(err, "%s: the pickle is not a state dict", path);
    named_list tensors = {0};
    int budget = MAX_VALUES;
    if (rc == 0) rc = collect(sd, "", 0, &budget, &tensors, path, err);
    /* tensors are views of storages the file holds: together at most the
     * file's bytes (twice, for tied weights saved under two names) */
    zip_stat_t whole;
    size_t file_bytes = 0, total = 0;
    for (zip_int64_t i = 0; i < entries; i++)
        if (zip_stat_index(z, (zip_uint64_t)i, 0, &whole) == 0 && (whole.valid & ZIP_STAT_SIZE)) file_bytes += whole.size;
    if (rc == 0) {
        f->tensors = calloc((size_t)tensors.n + 1, sizeof *f->tensors);
        f->owned = calloc((size_t)tensors.n + 1, sizeof *f->owned);
        if (!f->tensors || !f->owned) rc = clipc_fail(err, "out of memory");
    }
    for (int i = 0; rc == 0 && i < tensors.n; i++) {
        const pval *t = tensors.items[i].t;
        const char *key_name = tensors.items[i].name;
        /* the storage: read, then the tensor gathered out of it */
        snprintf(name, sizeof name, "%sdata/%s", prefix, t->storage->s);
        size_t slen = 0, esz = dtype_size(t->dtype);
        unsigned char *storage = read_entry(z, name, &slen, path, err);
        if (!storage) {
            rc = -1;
            break;
        }
        /* numel and the furthest element the view reaches, in checked
         * arithmetic (sizes and strides are each below 2^40, their
         * products need not be) */
        size_t numel = 1, last = (size_t)t->offset, reach;
        bool empty = false, fits = true;
        for (int d = 0; d < t->ndim && fits; d++) {
            fits = size_mul(numel, (size_t)t->shape[d], &numel);
            if (t->shape[d] == 0) empty = true;
            else if (fits) fits = size_mul((size_t)(t->shape[d] - 1), (size_t)t->stride[d], &reach) &&
                                 !__builtin_add_overflow(last, reach, &last);
        }
        if (!fits || slen / esz < (size_t)t->storage->i || (!empty && last >= slen / esz) || numel > slen / esz + 1) {
            free(storage);
            rc = clipc_fail(err, "%s: tensor '%s' reaches past its storage", path, key_name);
            break;
        }
        total += numel * esz;
        if (total > 2 * file_bytes + (1u << 20)) {
            free(storage);
            rc = clipc_fail(err, "%s: the tensors add up to more than twice the archive's data (views of one storage?)",
                            path);
            break;
        }
        unsigned char *data = malloc(numel * esz + 1);
        if (!data) {
            free(storage);
            rc = clipc_fail(err, "out of memory for tensor '%s'", key_name);
            break;
        }
        if (numel) gather(t, storage, data, esz);
        free(storage);
        st_tensor *out = &f->tensors[f->count];
        f->owned[f->count] = data;
        out->name = strdup(key_name);
        out->dtype = t->dtype;
        out->ndim = (int)t->ndim;
        memcpy(out->shape, t->shape, sizeof out->shape);
        out->data = data;
        out->nbytes = numel * esz;
        f->count++;
        if (!out->name) rc = clipc_fail(err, "out of memory");
    }
    free(tensors.items);
    unpickler_free(&u);
    free(pkl);
    zip_close(z);
    if (rc) st_close(f);
    return rc;
}

int pickle_check(const unsigned char *pkl, size_t len, int *tensors, clipc_error *err) {
    unpickler u = {.p = pkl, .end = pkl + len, .err = err, .path = "data.pkl"};
    pval *root = NULL;
    int rc = (long long)len > limit_of(LIMIT_PICKLE_BYTES)
                 ? clipc_fail(err, "data.pkl is over %lld bytes (%s raises it)", limit_of(LIMIT_PICKLE_BYTES),
                              limit_env(LIMIT_PICKLE_BYTES))
                 : run(&u, &root);
    const pval *sd = rc == 0 ? state_dict_of(root) : NULL;
    if (rc == 0 && !sd) rc = clipc_fail(err, "the pickle is not a state dict");
    named_list list = {0};
    int budget = MAX_VALUES;
    if (rc == 0) rc = collect(sd, "", 0, &budget, &list, "data.pkl", err);
    *tensors = list.n;
    free(list.items);
    unpickler_free(&u);
    return rc;
}
