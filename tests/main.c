/* main.c — runs every test suite. */
#include "test.h"

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int test_passed, test_failed;
const char *test_reference = "../shared/reference";
const char *clipc_binary = "build/clipc";

const char *ref_path(const char *rel) {
    static char bufs[8][1024];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", test_reference, rel);
    return b;
}

double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || isnan(d)) m = isnan(d) ? INFINITY : d;
    }
    return m;
}

double min_row_cosine(const float *a, const float *b, int rows, int dim) {
    double worst = 1.0;
    for (int r = 0; r < rows; r++) {
        double ab = 0, aa = 0, bb = 0;
        for (int j = 0; j < dim; j++) {
            double x = a[(size_t)r * dim + j], y = b[(size_t)r * dim + j];
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        double c = ab / sqrt(aa * bb + 1e-300);
        if (c < worst || isnan(c)) worst = isnan(c) ? -1.0 : c;
    }
    return worst;
}

int load_npy(const char *rel, npy_array *a) {
    clipc_error err;
    if (npy_read(ref_path(rel), a, &err)) {
        CHECK(0, "cannot load fixture: %s", err.message);
        return -1;
    }
    return 0;
}

int run_cmd(const char *cmd) {
    fflush(stdout); /* the command's output after ours */
    int st = system(cmd);
    if (st == -1) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Peak memory of a command, measured honestly: a child forked from this
 * (by then large, under ASan especially) process would report the parent's
 * resident pages as its own peak (Linux carries the high-water mark across
 * exec). So a small helper is forked first thing in main, and runs the
 * commands on request: cmd in through one pipe, status and peak out. */
static int spawner_in = -1, spawner_out = -1;

static void spawner_loop(int in, int out) {
    char cmd[8192];
    size_t len;
    while (read(in, &len, sizeof len) == (ssize_t)sizeof len && len < sizeof cmd) {
        size_t got = 0;
        while (got < len) {
            ssize_t r = read(in, cmd + got, len - got);
            if (r <= 0) _exit(0);
            got += (size_t)r;
        }
        cmd[len] = '\0';
        long result[2] = {-1, 0};
        pid_t pid = fork();
        if (pid == 0) {
            execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
            _exit(127);
        }
        int status = 0;
        struct rusage ru;
        if (pid > 0 && wait4(pid, &status, 0, &ru) == pid) {
            result[0] = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            result[1] = ru.ru_maxrss;
        }
        if (write(out, result, sizeof result) != (ssize_t)sizeof result) _exit(0);
    }
    _exit(0);
}

static void start_spawner(void) {
    int to[2], from[2];
    if (pipe(to) || pipe(from)) return;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(to[1]), close(from[0]);
        spawner_loop(to[0], from[1]);
    }
    close(to[0]), close(from[1]);
    if (pid > 0) spawner_in = to[1], spawner_out = from[0];
}

int run_measured(const char *cmd, long *maxrss_kb) {
    size_t len = strlen(cmd);
    long result[2];
    fflush(stdout);
    if (spawner_in < 0 || write(spawner_in, &len, sizeof len) != (ssize_t)sizeof len ||
        write(spawner_in, cmd, len) != (ssize_t)len || read(spawner_out, result, sizeof result) != (ssize_t)sizeof result)
        return -1;
    *maxrss_kb = result[1];
    return (int)result[0];
}

/* A one-shot HTTP/1.0 request on loopback: the status, and the body in
 * *body (malloc'd, NUL-terminated; *len bytes). */
int test_http(int port, const char *method, const char *target, const void *data, size_t data_len, char **body,
              size_t *len) {
    *body = NULL, *len = 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    char head[2048];
    int n = snprintf(head, sizeof head, "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: %zu\r\n\r\n", method,
                     target, data_len);
    if (write(fd, head, (size_t)n) != n) data_len = 0;
    for (size_t off = 0; off < data_len;) {
        ssize_t w = write(fd, (const char *)data + off, data_len - off);
        if (w <= 0) break;
        off += (size_t)w;
    }
    size_t cap = 65536, got = 0;
    char *buf = malloc(cap + 1);
    for (ssize_t r; (r = read(fd, buf + got, cap - got)) > 0;) {
        got += (size_t)r;
        if (got == cap) buf = realloc(buf, (cap *= 2) + 1);
    }
    close(fd);
    buf[got] = 0;
    int status = 0;
    sscanf(buf, "HTTP/%*s %d", &status);
    char *start = strstr(buf, "\r\n\r\n");
    if (start) {
        *len = got - (size_t)(start + 4 - buf);
        *body = malloc(*len + 1);
        memcpy(*body, start + 4, *len);
        (*body)[*len] = 0;
    }
    free(buf);
    return status;
}

int main(int argc, char **argv) {
    start_spawner();
    if (getenv("CLIPC_REFERENCE")) test_reference = getenv("CLIPC_REFERENCE");
    if (getenv("CLIPC")) clipc_binary = getenv("CLIPC");
    struct { const char *name; void (*fn)(void); } suites[] = {
        {"util", test_util}, {"tokenizer", test_tokenizer}, {"image", test_image},
        {"model", test_model}, {"train", test_train}, {"eval", test_eval}, {"index", test_index}, {"precision", test_precision}, {"arch", test_arch}, {"pull", test_pull}, {"hostile", test_hostile}, {"finetune", test_finetune}, {"siglip", test_siglip}, {"coca", test_coca}, {"cli", test_cli}, {"readme", test_readme},
    };
    for (size_t i = 0; i < sizeof suites / sizeof *suites; i++) {
        if (argc > 1 && strcmp(argv[1], suites[i].name) != 0) continue;
        int p = test_passed, f = test_failed;
        suites[i].fn();
        printf("suite %-10s %d passed, %d failed\n", suites[i].name, test_passed - p, test_failed - f);
    }
    printf("%d passed, %d failed\n", test_passed, test_failed);
    if (spawner_in >= 0) close(spawner_in); /* the helper exits */
    return test_failed ? 1 : 0;
}
