/* report.c — pictures of evaluation results: the confusion matrix as an
 * SVG heat map (no dependencies; any browser shows it). */
#include "eval.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Text made safe for XML character data and attributes. */
static void put_escaped(FILE *f, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

int write_confusion_svg(const char *path, const class_metrics *m, char *const *class_names, const char *title,
                        clipc_error *err) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return clipc_fail(err, "out of memory");
    int C = m->n_classes;
    int cell = C <= 20 ? 44 : C <= 50 ? 18 : 8, label_w = 150, top = 60;
    int width = label_w + C * cell + 40, height = top + C * cell + 110;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
               "font-family=\"sans-serif\">\n<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n",
            width, height, width, height, width, height);
    fprintf(f, "<text x=\"%d\" y=\"22\" font-size=\"15\">", label_w);
    put_escaped(f, title);
    fprintf(f, "</text>\n<text x=\"%d\" y=\"42\" font-size=\"11\" fill=\"#555\">rows: true class; columns: predicted; "
               "shade: share of the row</text>\n", label_w);
    for (int r = 0; r < C; r++) {
        long total = 0;
        for (int k = 0; k < C; k++) total += m->confusion[(size_t)r * C + k];
        for (int k = 0; k < C; k++) {
            long v = m->confusion[(size_t)r * C + k];
            double share = total ? (double)v / total : 0;
            /* white to deep blue */
            int red = (int)(255 - share * (255 - 21)), green = (int)(255 - share * (255 - 101)),
                blue = (int)(255 - share * (255 - 192));
            int x = label_w + k * cell, y = top + r * cell;
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#%02x%02x%02x\" stroke=\"#ddd\">"
                       "<title>%ld</title></rect>\n", x, y, cell, cell, red, green, blue, v);
            if (cell >= 40)
                fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\" text-anchor=\"middle\" fill=\"%s\">%ld</text>\n",
                        x + cell / 2, y + cell / 2 + 4, share > 0.5 ? "white" : "black", v);
        }
        if (cell >= 8) {
            fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"%d\" text-anchor=\"end\">", label_w - 6,
                    top + r * cell + cell / 2 + 4, cell >= 18 ? 12 : 7);
            put_escaped(f, class_names[r]);
            fputs("</text>\n", f);
            int x = label_w + r * cell + cell / 2 + 4, y = top + C * cell + 6;
            fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"%d\" text-anchor=\"end\" transform=\"rotate(-90 %d %d)\">",
                    x, y, cell >= 18 ? 12 : 7, x, y);
            put_escaped(f, class_names[r]);
            fputs("</text>\n", f);
        }
    }
    fputs("</svg>\n", f);
    if (fclose(f) != 0) {
        free(buf);
        return clipc_fail(err, "out of memory");
    }
    int rc = write_file_atomic(path, buf, len, err);
    free(buf);
    return rc;
}

static void put_base64(FILE *f, const unsigned char *data, size_t len) {
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = data[i] << 16 | (i + 1 < len ? data[i + 1] << 8 : 0) | (i + 2 < len ? data[i + 2] : 0);
        fputc(abc[v >> 18 & 63], f);
        fputc(abc[v >> 12 & 63], f);
        fputc(i + 1 < len ? abc[v >> 6 & 63] : '=', f);
        fputc(i + 2 < len ? abc[v & 63] : '=', f);
    }
}

int write_retrieval_sheet(const char *path, const image_set *s, const char *const *queries, int n_q, int k,
                          const int *hits, const float *scores, const int *wanted, clipc_error *err) {
    enum { THUMB = 96, GAP = 34, ROW = THUMB + 58, LEFT = 16 };
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    unsigned char *rgb = malloc((size_t)THUMB * THUMB * 3);
    if (!f || !rgb) {
        if (f) fclose(f);
        free(buf), free(rgb);
        return clipc_fail(err, "out of memory");
    }
    int width = LEFT * 2 + k * (THUMB + GAP), height = n_q * ROW + 10, rc = 0;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
               "font-family=\"sans-serif\">\n<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n",
            width, height, width, height, width, height);
    for (int q = 0; q < n_q && rc == 0; q++) {
        int y = q * ROW + 22;
        int right = 0;
        for (int r = 0; r < k; r++) right += hits[(size_t)q * k + r] >= 0 && s->labels[hits[(size_t)q * k + r]] == wanted[q];
        fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"14\">\u201c", LEFT, y);
        put_escaped(f, queries[q]);
        fprintf(f, "\u201d <tspan fill=\"#555\" font-size=\"12\">(%d of %d: ", right, k);
        put_escaped(f, s->class_names[wanted[q]]);
        fputs(")</tspan></text>\n", f);
        for (int r = 0; r < k && rc == 0; r++) {
            int i = hits[(size_t)q * k + r], x = LEFT + r * (THUMB + GAP);
            if (i < 0) continue;
            unsigned char *png = NULL;
            size_t png_len = 0;
            rc = image_set_rgb(s, i, THUMB, rgb, err);
            if (rc == 0) rc = image_encode_png(rgb, THUMB, THUMB, &png, &png_len, err);
            if (rc) break;
            fprintf(f, "<image x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" href=\"data:image/png;base64,", x, y + 8,
                    THUMB, THUMB);
            put_base64(f, png, png_len);
            free(png);
            /* a green frame for a hit of the wanted class, a red one (and a cross) for another class */
            bool right = s->labels[i] == wanted[q];
            fprintf(f, "\"/>\n<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"%s\" "
                       "stroke-width=\"3\" class=\"%s\"/>\n",
                    x - 2, y + 6, THUMB + 4, THUMB + 4, right ? "#2e7d32" : "#c62828", right ? "hit" : "miss");
            fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\" fill=\"%s\">%d. %s", x, y + THUMB + 22,
                    right ? "black" : "#c62828", r + 1, right ? "" : "\u2717 ");
            put_escaped(f, s->class_names[s->labels[i]]);
            fprintf(f, " %.3f</text>\n", scores[(size_t)q * k + r]);
        }
    }
    fputs("</svg>\n", f);
    free(rgb);
    if (fclose(f) != 0 && rc == 0) rc = clipc_fail(err, "out of memory");
    if (rc == 0) rc = write_file_atomic(path, buf, len, err);
    free(buf);
    return rc;
}
