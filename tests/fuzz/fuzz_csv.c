/* fuzz_csv.c — libFuzzer target for the CSV readers: image/caption pairs
 * (src/train/csv.c: `clipc train --data`, `eval retrieval`), the labelled
 * sets built on them (src/eval/dataset.c: `eval zeroshot --dataset F.csv`,
 * class numbers or names) and the class-names file (`--classnames`).
 * Quoted fields, doubled quotes, CRLF, blank lines, missing columns, huge
 * and out-of-order class numbers: read or refused cleanly, never a crash, a
 * leak or undefined behaviour. Every label must name a class that exists.
 *
 * Input: one byte of mode (bit 0: tab-separated instead of comma; bit 1:
 * a labelled set instead of pairs), then the file. */
#include "../../src/internal.h"
#include "../../src/eval/eval.h"
#include "../../src/train/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char csv[64], tsv[64];
static void teardown(void) {
    unlink(csv), unlink(tsv);
    *strrchr(csv, '/') = '\0';
    rmdir(csv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!csv[0]) {
        snprintf(csv, sizeof csv, "/tmp/clipc_fuzz_csv_%d/rows.csv", (int)getpid());
        snprintf(tsv, sizeof tsv, "/tmp/clipc_fuzz_csv_%d/rows.tsv", (int)getpid());
        char dir[64];
        snprintf(dir, sizeof dir, "/tmp/clipc_fuzz_csv_%d", (int)getpid());
        mkdir(dir, 0700);
        atexit(teardown);
    }
    if (size < 1) return 0;
    const char *path = data[0] & 1 ? tsv : csv;
    bool labelled = data[0] & 2;
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    bool ok = fwrite(data + 1, 1, size - 1, f) == size - 1;
    if (fclose(f) != 0 || !ok) return 0;
    clipc_error err;
    if (!labelled) {
        csv_pairs rows;
        if (csv_load(path, "filepath", "title", 0, &rows, &err)) return 0;
        for (int i = 0; i < rows.count; i++)
            if (!rows.paths[i] || !rows.captions[i] || !rows.paths[i][0]) abort();
        csv_free(&rows);
        return 0;
    }
    image_set s;
    if (image_set_open(path, "test", "filepath", "label", &s, &err)) return 0;
    for (int i = 0; i < s.count; i++)
        if (s.labels[i] < 0 || s.labels[i] >= s.n_classes || !s.class_names[s.labels[i]]) abort();
    image_set_read_classnames(&s, path, &err); /* the same bytes as a class-names file */
    for (int c = 0; c < s.n_classes; c++)
        if (!s.class_names[c]) abort();
    image_set_free(&s);
    return 0;
}
