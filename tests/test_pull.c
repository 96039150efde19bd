/* test_pull.c — clipc pull end to end against an HTTP server of the test's
 * own on 127.0.0.1 (libmicrohttpd in a thread): a redirect, a transfer cut
 * off and then resumed with a Range request, a server that ignores Range,
 * a checksum taken from X-Linked-Etag, a wrong checksum against the real
 * table (CLIPC_PULL_BASE_URL), a 404; then -m NAME on a pulled model. */
#include "test.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static unsigned char *blob, *hf_model, *hf_config, *siglip[5];
static size_t siglip_len[5];
static const char *const siglip_names[5] = {"model.safetensors", "config.json", "spiece.model", "tokenizer_config.json",
                                            "preprocessor_config.json"};
static size_t blob_len, hf_model_len, hf_config_len;
static char blob_sha[65];
static long last_range = -1; /* the start of the last Range request seen */

static void sha256_hex(const unsigned char *data, size_t len, char hex[65]) {
    unsigned char d[32];
    unsigned int n = 0;
    EVP_Digest(data, len, d, &n, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

/* /trunc: declares the whole file, sends half, then fails the connection */
static ssize_t half_then_fail(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)cls;
    size_t half = blob_len / 2;
    if (pos >= half) return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = half - (size_t)pos < max ? half - (size_t)pos : max;
    memcpy(buf, blob + pos, n);
    return (ssize_t)n;
}

static enum MHD_Result answer(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *upload, size_t *upload_len, void **state) {
    (void)cls, (void)method, (void)version, (void)upload, (void)upload_len, (void)state;
    struct MHD_Response *r = NULL;
    unsigned status = MHD_HTTP_OK;
    const char *range = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Range");
    long from = range && !strncmp(range, "bytes=", 6) ? strtol(range + 6, NULL, 10) : 0;
    if (range) last_range = from;
    if (!strncmp(url, "/redirect/", 10)) {
        r = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(r, "Location", "/files/blob.bin");
        status = MHD_HTTP_FOUND;
    } else if (!strcmp(url, "/files/blob.bin") || !strcmp(url, "/norange/blob.bin") || !strncmp(url, "/linked", 7)) {
        bool ranged = from > 0 && url[1] != 'n' && (size_t)from < blob_len;
        r = MHD_create_response_from_buffer(blob_len - (ranged ? (size_t)from : 0), blob + (ranged ? from : 0),
                                            MHD_RESPMEM_PERSISTENT);
        if (ranged) {
            char cr[128];
            snprintf(cr, sizeof cr, "bytes %ld-%zu/%zu", from, blob_len - 1, blob_len);
            MHD_add_response_header(r, "Content-Range", cr);
            status = MHD_HTTP_PARTIAL_CONTENT;
        }
        if (!strcmp(url, "/linked/blob.bin")) MHD_add_response_header(r, "X-Linked-Etag", blob_sha);
        if (!strcmp(url, "/linkedbad/blob.bin"))
            MHD_add_response_header(r, "X-Linked-Etag", "\"0000000000000000000000000000000000000000000000000000000000000000\"");
    } else if (!strcmp(url, "/trunc/blob.bin")) {
        r = MHD_create_response_from_callback(blob_len, 4096, half_then_fail, NULL, NULL);
    } else if (strstr(url, "/ViT-B-32.pt")) { /* the real table's URL path, other bytes */
        r = MHD_create_response_from_buffer(blob_len, blob, MHD_RESPMEM_PERSISTENT);
    } else if (!strcmp(url, "/openai/clip-vit-base-patch32/resolve/main/model.safetensors")) {
        r = MHD_create_response_from_buffer(hf_model_len, hf_model, MHD_RESPMEM_PERSISTENT);
    } else if (!strcmp(url, "/openai/clip-vit-base-patch32/resolve/main/config.json")) {
        r = MHD_create_response_from_buffer(hf_config_len, hf_config, MHD_RESPMEM_PERSISTENT);
    } else if (!strncmp(url, "/google/siglip-base-patch16-224/resolve/main/", 45)) { /* a SigLIP model's five files */
        for (int i = 0; i < 5 && !r; i++)
            if (!strcmp(url + 45, siglip_names[i]))
                r = MHD_create_response_from_buffer(siglip_len[i], siglip[i], MHD_RESPMEM_PERSISTENT);
        if (!r) {
            r = MHD_create_response_from_buffer(9, "not found", MHD_RESPMEM_PERSISTENT);
            status = MHD_HTTP_NOT_FOUND;
        }
    } else {
        r = MHD_create_response_from_buffer(9, "not found", MHD_RESPMEM_PERSISTENT);
        status = MHD_HTTP_NOT_FOUND;
    }
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static size_t file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (size_t)st.st_size : (size_t)-1;
}

void test_pull(void) {
    clipc_error err;
    if (read_file("tests/data/pytorch/f16.pt", &blob, &blob_len, &err) ||
        read_file("tests/data/arch/hf_mlp2.5_eps_mixed_act/model.safetensors", &hf_model, &hf_model_len, &err) ||
        read_file("tests/data/arch/hf_mlp2.5_eps_mixed_act/config.json", &hf_config, &hf_config_len, &err)) {
        CHECK(0, "%s", err.message);
        return;
    }
    sha256_hex(blob, blob_len, blob_sha);
    /* an ephemeral port on 127.0.0.1 only */
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, answer, NULL,
                                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_END);
    int port = d ? MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port : 0;
    CHECK(d != NULL, "could not start the loopback server");
    if (!d) return;
    char dir[] = "/tmp/clipc_pull_XXXXXX", cmd[4096], path[600], base[64];
    if (!mkdtemp(dir)) return;
    snprintf(base, sizeof base, "http://127.0.0.1:%d", port);

    /* a redirect, then the file, checked against --sha256, loads as a model */
    snprintf(cmd, sizeof cmd, "%s pull --url %s/redirect/blob.bin --sha256 %s --cache %s/c >%s/out 2>%s/err", clipc_binary,
             base, blob_sha, dir, dir, dir);
    CHECK(run_cmd(cmd) == 0, "pull through a redirect");
    snprintf(path, sizeof path, "%s/c/blob.bin/blob.bin", dir);
    CHECK(file_size(path) == blob_len, "the pulled file has %zu bytes, expected %zu", file_size(path), blob_len);
    snprintf(cmd, sizeof cmd, "%s info %s/c/blob.bin/blob.bin >/dev/null 2>&1", clipc_binary, dir);
    CHECK(run_cmd(cmd) == 0, "the pulled file loads");

    /* cut off halfway: one clear error, the .part kept, no file; then resumed */
    snprintf(cmd, sizeof cmd, "%s pull --url %s/trunc/blob.bin --sha256 %s --cache %s/r >%s/out 2>%s/err", clipc_binary,
             base, blob_sha, dir, dir, dir);
    CHECK(run_cmd(cmd) == 1, "a truncated transfer fails");
    snprintf(cmd, sizeof cmd, "test $(wc -l < %s/err) = 1 && grep -q 'kept for a resumed retry' %s/err", dir, dir);
    CHECK(run_cmd(cmd) == 0, "one error line that says the partial download is kept");
    snprintf(path, sizeof path, "%s/r/blob.bin/blob.bin", dir);
    CHECK(file_size(path) == (size_t)-1, "no file after a failed transfer");
    snprintf(path, sizeof path, "%s/r/blob.bin/blob.bin.part", dir);
    size_t part = file_size(path);
    CHECK(part > 0 && part <= blob_len / 2, "the .part holds what arrived (%zu of %zu bytes)", part, blob_len);
    last_range = -1;
    snprintf(cmd, sizeof cmd, "%s pull --url %s/files/blob.bin --sha256 %s --cache %s/r >%s/out 2>%s/err", clipc_binary,
             base, blob_sha, dir, dir, dir);
    CHECK(run_cmd(cmd) == 0, "the resumed pull succeeds");
    CHECK(last_range == (long)part, "it resumed with Range: bytes=%zu- (server saw %ld)", part, last_range);
    snprintf(path, sizeof path, "%s/r/blob.bin/blob.bin", dir);
    CHECK(file_size(path) == blob_len, "the resumed file is whole (%zu bytes)", file_size(path));

    /* a server that ignores Range: the download starts over and still verifies */
    snprintf(cmd, sizeof cmd, "mkdir -p %s/n/blob.bin && head -c 1000 tests/data/pytorch/f16.pt > %s/n/blob.bin/blob.bin.part && "
             "%s pull --url %s/norange/blob.bin --sha256 %s --cache %s/n >/dev/null 2>&1 && cmp -s %s/n/blob.bin/blob.bin tests/data/pytorch/f16.pt",
             dir, dir, clipc_binary, base, blob_sha, dir, dir);
    CHECK(run_cmd(cmd) == 0, "a server without Range support");

    /* Hugging Face's X-Linked-Etag as the published checksum */
    snprintf(cmd, sizeof cmd, "%s pull --url %s/linked/blob.bin --cache %s/l >/dev/null 2>%s/err && ! grep -q 'no published' %s/err",
             clipc_binary, base, dir, dir, dir);
    CHECK(run_cmd(cmd) == 0, "verified against X-Linked-Etag");
    snprintf(cmd, sizeof cmd, "%s pull --url %s/linkedbad/blob.bin --cache %s/lb >/dev/null 2>%s/err; test $? = 1 && "
             "grep -q 'does not match the published 0000' %s/err && test ! -e %s/lb/blob.bin/blob.bin && test ! -e %s/lb/blob.bin/blob.bin.part",
             clipc_binary, base, dir, dir, dir, dir, dir);
    CHECK(run_cmd(cmd) == 0, "a wrong X-Linked-Etag: refused, nothing left");

    /* the real table, served other bytes: OpenAI's published SHA-256 refuses them */
    snprintf(cmd, sizeof cmd, "CLIPC_PULL_BASE_URL=%s %s pull ViT-B-32 --cache %s/t >/dev/null 2>%s/err; test $? = 1 && "
             "grep -q 'does not match the published 40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af' %s/err && "
             "test -z \"$(ls %s/t/ViT-B-32)\"",
             base, clipc_binary, dir, dir, dir, dir);
    CHECK(run_cmd(cmd) == 0, "a checksum mismatch against the table: one error, nothing left");

    /* a 404: one error line, nothing left */
    snprintf(cmd, sizeof cmd, "%s pull --url %s/nothing/here.bin --cache %s/e >/dev/null 2>%s/err; test $? = 1 && "
             "test $(wc -l < %s/err) = 1 && grep -q '404' %s/err && test -z \"$(ls %s/e/here.bin)\"",
             clipc_binary, base, dir, dir, dir, dir, dir);
    CHECK(run_cmd(cmd) == 0, "a 404 is one error line");

    /* -m NAME: refused with the pull command before, works after */
    snprintf(cmd, sizeof cmd, "CLIPC_CACHE=%s/h %s info openai/clip-vit-base-patch32 2>&1 | grep -q \"run 'clipc pull openai/clip-vit-base-patch32' first\"",
             dir, clipc_binary);
    CHECK(run_cmd(cmd) == 0, "-m NAME before the pull says how to get it");
    snprintf(cmd, sizeof cmd, "CLIPC_PULL_BASE_URL=%s %s pull openai/clip-vit-base-patch32 --cache %s/h >/dev/null 2>&1 && "
             "CLIPC_CACHE=%s/h %s info openai/clip-vit-base-patch32 | grep -q 'MLP 160 wide' && "
             "CLIPC_CACHE=%s/h %s models | grep 'openai/clip-vit-base-patch32' | grep -q yes",
             base, clipc_binary, dir, dir, clipc_binary, dir, clipc_binary);
    CHECK(run_cmd(cmd) == 0, "a pulled Hugging Face model by name, and clipc models shows it");

    /* the shipped model on a photo says once what it is for and how to pull a real one; not on its own kind of image */
    snprintf(cmd, sizeof cmd, "env -u CLIPC_MODEL %s classify --labels cat,dog %s 2>&1 >/dev/null | grep -c 'clipc pull ViT-B-32' | grep -qx 1 && "
             "%s export-images --limit 1 --out %s/fm >/dev/null 2>&1 && "
             "env -u CLIPC_MODEL %s classify --labels cat,dog $(find %s/fm -name '*.png' | head -1) 2>&1 >/dev/null | (! grep -q 'clipc pull')",
             clipc_binary, ref_path("preprocess/images/coffee_600x400_q90.jpg"), clipc_binary, dir, clipc_binary, dir);
    CHECK(run_cmd(cmd) == 0, "the default model's note on photos (and not on Fashion-MNIST images)");

    /* a SigLIP model comes as five files: the weights, config.json, spiece.model with its
     * tokenizer_config.json, preprocessor_config.json; pulled, it classifies by name */
    const char *local[3] = {"tests/data/siglip/b_like/model.safetensors", "tests/data/siglip/b_like/config.json",
                            "tests/data/siglip/unigram/spiece.model"};
    for (int i = 0; i < 3; i++) CHECK(read_file(local[i], &siglip[i], &siglip_len[i], &err) == 0, "%s", err.message);
    siglip[3] = (unsigned char *)strdup("{\"tokenizer_class\": \"SiglipTokenizer\", \"do_lower_case\": true}");
    siglip[4] = (unsigned char *)strdup("{\"image_processor_type\": \"SiglipImageProcessor\", \"resample\": 3, "
                                        "\"size\": {\"height\": 32, \"width\": 32}, \"image_mean\": [0.5, 0.5, 0.5]}");
    siglip_len[3] = strlen((char *)siglip[3]), siglip_len[4] = strlen((char *)siglip[4]);
    snprintf(cmd, sizeof cmd, "CLIPC_PULL_BASE_URL=%s %s pull google/siglip-base-patch16-224 --cache %s/s >/dev/null 2>&1 && "
             "ls %s/s/google--siglip-base-patch16-224/ | wc -l | grep -qx 5 && "
             "CLIPC_CACHE=%s/s %s info google/siglip-base-patch16-224 | grep -q 'family: *SigLIP' && "
             "CLIPC_CACHE=%s/s %s classify -m google/siglip-base-patch16-224 --labels cat,dog %s | grep -q 'SigLIP: each label'",
             base, clipc_binary, dir, dir, dir, clipc_binary, dir, clipc_binary,
             ref_path("preprocess/images/chelsea_224x224.png"));
    CHECK(run_cmd(cmd) == 0, "a pulled SigLIP model (five files) classifies by name");

    MHD_stop_daemon(d);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    run_cmd(cmd);
    free(blob), free(hf_model), free(hf_config);
    for (int i = 0; i < 5; i++) free(siglip[i]);
}
