/* pull.c — published CLIP checkpoints by name: the table of where each
 * lives and its published checksum, and the download into a local cache.
 *
 * A download goes to FILE.part in the model's cache folder, resuming a
 * .part left by an interrupted run (an HTTP Range request; a server that
 * answers 200 instead of 206 starts it over). When the transfer completes,
 * the file's SHA-256 is checked against the published one — OpenAI's URLs
 * carry it, Hugging Face reports it for large files in X-Linked-Etag — and
 * only then is the .part fsynced and renamed into place, so a name in the
 * cache is always a complete, verified file. A checksum mismatch deletes
 * the .part; a network failure keeps it for the next run to resume.
 *
 * $CLIPC_PULL_BASE_URL replaces the scheme and host of every URL (the tests
 * serve the files from 127.0.0.1). */
#include "hub.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define OPENAI "https://openaipublic.azureedge.net/clip/models/"
#define HF "https://huggingface.co/"

/* OpenAI's checkpoints are TorchScript archives whose URL carries the
 * file's SHA-256; Hugging Face repositories hold safetensors (the openai
 * organisation) or OpenCLIP's .bin with its open_clip_config.json (laion). */
static const hub_model MODELS[] = {
    {"RN50", "OpenAI", {OPENAI "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt"},
     {"afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"}},
    {"RN101", "OpenAI", {OPENAI "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt"},
     {"8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599"}},
    {"RN50x4", "OpenAI", {OPENAI "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt"},
     {"7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd"}},
    {"RN50x16", "OpenAI", {OPENAI "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt"},
     {"52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa"}},
    {"RN50x64", "OpenAI", {OPENAI "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt"},
     {"be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c"}},
    {"ViT-B-32", "OpenAI", {OPENAI "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"},
     {"40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"}},
    {"ViT-B-16", "OpenAI", {OPENAI "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"},
     {"5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"}},
    {"ViT-L-14", "OpenAI", {OPENAI "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt"},
     {"b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"}},
    {"ViT-L-14-336", "OpenAI", {OPENAI "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt"},
     {"3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02"}},
#define HF_CLIP(name) \
    {name, "Hugging Face", {HF name "/resolve/main/model.safetensors", HF name "/resolve/main/config.json"}, {NULL, NULL}}
    HF_CLIP("openai/clip-vit-base-patch32"),
    HF_CLIP("openai/clip-vit-base-patch16"),
    HF_CLIP("openai/clip-vit-large-patch14"),
    HF_CLIP("openai/clip-vit-large-patch14-336"),
#define OPENCLIP(name, repo)                                                                                          \
    {name, "OpenCLIP", {HF repo "/resolve/main/open_clip_pytorch_model.bin", HF repo "/resolve/main/open_clip_config.json"}, \
     {NULL, NULL}}
    OPENCLIP("ViT-B-32:laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
    OPENCLIP("ViT-B-32:datacomp_xl_s13b_b90k", "laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"),
    OPENCLIP("ViT-B-16:laion2b_s34b_b88k", "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"),
    OPENCLIP("ViT-B-16:datacomp_xl_s13b_b90k", "laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K"),
    OPENCLIP("ViT-L-14:datacomp_xl_s13b_b90k", "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K"),
    OPENCLIP("ViT-H-14:laion2b_s32b_b79k", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    OPENCLIP("ViT-bigG-14:laion2b_s39b_b160k", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"),
    /* OpenCLIP's CoCa (coca_ViT-*): the captioners of `clipc caption` */
    OPENCLIP("coca_ViT-B-32:laion2b_s13b_b90k", "laion/CoCa-ViT-B-32-laion2B-s13B-b90k"),
    OPENCLIP("coca_ViT-B-32:mscoco_finetuned_laion2b_s13b_b90k", "laion/mscoco_finetuned_CoCa-ViT-B-32-laion2B-s13B-b90k"),
    OPENCLIP("coca_ViT-L-14:laion2b_s13b_b90k", "laion/CoCa-ViT-L-14-laion2B-s13B-b90k"),
    OPENCLIP("coca_ViT-L-14:mscoco_finetuned_laion2b_s13b_b90k", "laion/mscoco_finetuned_CoCa-ViT-L-14-laion2B-s13B-b90k"),
    /* SigLIP (SiglipModel): the weights, config.json, the SentencePiece model (SigLIP 2: Gemma's
     * tokenizer.model) with its tokenizer_config.json, and preprocessor_config.json */
#define HF_SIGLIP(name, spm)                                                                                       \
    {name,                                                                                                         \
     "Hugging Face",                                                                                               \
     {HF name "/resolve/main/model.safetensors", HF name "/resolve/main/config.json", HF name "/resolve/main/" spm, \
      HF name "/resolve/main/tokenizer_config.json", HF name "/resolve/main/preprocessor_config.json"},            \
     {NULL}}
    HF_SIGLIP("google/siglip-base-patch16-224", "spiece.model"),
    HF_SIGLIP("google/siglip-base-patch16-384", "spiece.model"),
    HF_SIGLIP("google/siglip-large-patch16-256", "spiece.model"),
    HF_SIGLIP("google/siglip-so400m-patch14-384", "spiece.model"),
    HF_SIGLIP("google/siglip2-base-patch16-224", "tokenizer.model"),
    HF_SIGLIP("google/siglip2-so400m-patch14-384", "tokenizer.model"),
};

const hub_model *hub_models(int *count) {
    *count = (int)(sizeof MODELS / sizeof *MODELS);
    return MODELS;
}

const hub_model *hub_find(const char *name) {
    for (size_t i = 0; i < sizeof MODELS / sizeof *MODELS; i++)
        if (!strcmp(MODELS[i].name, name)) return &MODELS[i];
    return NULL;
}

/* ---- the cache ------------------------------------------------------------------- */

int hub_cache_dir(const char *override, char *out, size_t cap, clipc_error *err) {
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int n = override && *override ? snprintf(out, cap, "%s", override)
          : xdg && *xdg           ? snprintf(out, cap, "%s/clipc", xdg)
          : home && *home         ? snprintf(out, cap, "%s/.cache/clipc", home)
                                  : -1;
    if (n < 0) return clipc_fail(err, "no cache folder: set XDG_CACHE_HOME or HOME, or pass --cache DIR");
    if ((size_t)n >= cap) return clipc_fail(err, "cache folder path too long");
    return 0;
}

/* "openai/clip-vit-base-patch32" -> "openai--clip-vit-base-patch32" */
static void folder_name(const char *name, char *out, size_t cap) {
    size_t j = 0;
    for (size_t i = 0; name[i] && j + 3 < cap; i++) {
        if (name[i] == '/' || name[i] == ':') {
            out[j++] = '-';
            out[j++] = '-';
        } else {
            out[j++] = name[i];
        }
    }
    out[j] = '\0';
}

static const char *basename_of(const char *url) {
    const char *s = strrchr(url, '/');
    return s ? s + 1 : url;
}

int hub_path(const char *cache, const hub_model *m, int file, char *out, size_t cap) {
    char folder[256];
    folder_name(m->name, folder, sizeof folder);
    return (size_t)snprintf(out, cap, "%s/%s/%s", cache, folder, basename_of(m->urls[file])) < cap ? 0 : -1;
}

/* ---- SHA-256 (OpenSSL) --------------------------------------------------------------- */

static int sha256_file(const char *path, char hex[65], clipc_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return clipc_fail(err, "%s: %s", path, strerror(errno));
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char buf[1 << 16], digest[32];
    unsigned int len = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, f)) > 0) ok = EVP_DigestUpdate(ctx, buf, n);
    ok = ok && !ferror(f) && EVP_DigestFinal_ex(ctx, digest, &len) && len == 32;
    EVP_MD_CTX_free(ctx);
    fclose(f);
    if (!ok) return clipc_fail(err, "%s: could not compute its SHA-256", path);
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    return 0;
}

/* ---- one download ------------------------------------------------------------------------ */

typedef struct transfer {
    FILE *out;
    hub_progress_fn progress;
    void *ctx;
    const char *what;
    curl_off_t resumed_from;
    long status;          /* of the final response */
    bool restart;         /* asked to resume, the server sent the whole file */
    char linked_sha[65];  /* Hugging Face's X-Linked-Etag: the file's SHA-256 */
} transfer;

static size_t on_header(char *line, size_t size, size_t n, void *userdata) {
    transfer *t = userdata;
    size_t len = size * n;
    if (len > 9 && !strncmp(line, "HTTP/", 5)) t->status = strtol(strchr(line, ' ') ? strchr(line, ' ') + 1 : line, NULL, 10);
    if (len > 15 && !strncasecmp(line, "X-Linked-Etag:", 14)) {
        const char *v = line + 14;
        while (*v == ' ' || *v == '"') v++;
        size_t k = 0;
        while (k < 64 && v + k < line + len && ((v[k] >= '0' && v[k] <= '9') || (v[k] >= 'a' && v[k] <= 'f'))) k++;
        if (k == 64) memcpy(t->linked_sha, v, 64), t->linked_sha[64] = '\0';
    }
    return len;
}

static size_t on_data(char *data, size_t size, size_t n, void *userdata) {
    transfer *t = userdata;
    if (t->resumed_from > 0 && t->status == 200) { /* a full answer to a Range request: start over */
        t->restart = true;
        return 0;
    }
    return fwrite(data, size, n, t->out) == n ? size * n : 0;
}

static int on_progress(void *userdata, curl_off_t total, curl_off_t now, curl_off_t ut, curl_off_t un) {
    (void)ut, (void)un;
    transfer *t = userdata;
    if (t->progress) t->progress(t->ctx, t->what, (long long)(t->resumed_from + now), (long long)(total ? t->resumed_from + total : 0));
    return 0;
}

/* url with its scheme and host replaced by $CLIPC_PULL_BASE_URL, if set. */
static void effective_url(const char *url, char *out, size_t cap) {
    const char *base = getenv("CLIPC_PULL_BASE_URL");
    const char *path = strstr(url, "://") ? strchr(strstr(url, "://") + 3, '/') : NULL;
    if (base && *base && path) snprintf(out, cap, "%s%s", base, path);
    else snprintf(out, cap, "%s", url);
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

/* Fetches url into dest (complete and verified, or not at all). */
static int fetch(const char *url, const char *sha256, const char *dest, hub_progress_fn progress, void *ctx,
                 bool *verified, clipc_error *err) {
    char part[4200], full[4096], got[65];
    snprintf(part, sizeof part, "%s.part", dest);
    effective_url(url, full, sizeof full);
    pthread_once(&curl_once, curl_init);
    for (int attempt = 0; attempt < 2; attempt++) {
        struct stat st;
        curl_off_t have = stat(part, &st) == 0 ? (curl_off_t)st.st_size : 0;
        transfer t = {.progress = progress, .ctx = ctx, .what = basename_of(dest), .resumed_from = have};
        t.out = fopen(part, have ? "ab" : "wb");
        if (!t.out) return clipc_fail(err, "%s: %s", part, strerror(errno));
        CURL *c = curl_easy_init();
        if (!c) {
            fclose(t.out);
            return clipc_fail(err, "could not start libcurl");
        }
        char curl_err[CURL_ERROR_SIZE] = "";
        curl_easy_setopt(c, CURLOPT_URL, full);
        curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
        curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
        curl_easy_setopt(c, CURLOPT_USERAGENT, "clipc/" CLIPC_VERSION);
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, curl_err);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, &t);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L); /* a stalled transfer fails after a minute */
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
        if (have) curl_easy_setopt(c, CURLOPT_RESUME_FROM_LARGE, have);
        CURLcode rc = curl_easy_perform(c);
        long code = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
        curl_easy_cleanup(c);
        bool written = fflush(t.out) == 0 && fsync(fileno(t.out)) == 0;
        written = fclose(t.out) == 0 && written;
        if (t.restart || (rc == CURLE_RANGE_ERROR && have)) { /* the server ignored the Range: fetch it whole */
            unlink(part);
            continue;
        }
        if (rc == CURLE_HTTP_RETURNED_ERROR && code == 416 && have) { /* the .part is already complete */
        } else if (rc != CURLE_OK) {
            bool some = stat(part, &st) == 0 && st.st_size > 0;
            if (!some) unlink(part); /* nothing to resume from */
            return clipc_fail(err, "download of %s failed: %s%s%s", full, curl_err[0] ? curl_err : curl_easy_strerror(rc),
                              some ? "; the partial download is kept for a resumed retry: " : "", some ? part : "");
        }
        if (!written) return clipc_fail(err, "%s: could not write the download", part);
        if (sha256_file(part, got, err)) return -1;
        const char *want = sha256 ? sha256 : t.linked_sha[0] ? t.linked_sha : NULL;
        if (want && strcmp(want, got)) {
            unlink(part);
            return clipc_fail(err, "%s: SHA-256 %s does not match the published %s (download deleted)", full, got, want);
        }
        *verified = want != NULL;
        if (rename(part, dest) != 0) return clipc_fail(err, "%s: %s", dest, strerror(errno));
        return 0;
    }
    return clipc_fail(err, "%s: the server does not resume downloads and sent the file whole twice", full);
}

int hub_pull(const hub_model *m, const char *cache, hub_progress_fn progress, void *ctx, char *path_out, size_t cap,
             int *unverified, clipc_error *err) {
    *unverified = 0;
    for (int f = 0; f < HUB_FILES && m->urls[f]; f++) {
        char dest[4096];
        if (hub_path(cache, m, f, dest, sizeof dest)) return clipc_fail(err, "cache path too long");
        char *slash = strrchr(dest, '/');
        *slash = '\0';
        if (make_dirs(dest, err)) return -1;
        *slash = '/';
        if (f == 0) snprintf(path_out, cap, "%s", dest);
        if (access(dest, F_OK) == 0) continue; /* already pulled (files land only when complete) */
        bool verified = false;
        if (fetch(m->urls[f], m->sha256[f], dest, progress, ctx, &verified, err)) return -1;
        *unverified += !verified;
    }
    return 0;
}

int hub_resolve(const char *name, char *path_out, size_t cap, clipc_error *err) {
    const hub_model *m = hub_find(name);
    if (!m) return 1;
    char cache[4096];
    if (hub_cache_dir(getenv("CLIPC_CACHE"), cache, sizeof cache, err)) return -1;
    if (hub_path(cache, m, 0, path_out, cap)) return clipc_fail(err, "cache path too long");
    if (access(path_out, R_OK) != 0)
        return clipc_fail(err, "model '%s' is not in the cache %s: run 'clipc pull %s' first", name, cache, name);
    return 0;
}
