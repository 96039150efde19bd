/* curve.c — the run's learning curves: the points collected as training
 * goes (history), and the SVG picture of training loss (and its running
 * mean) and zero-shot accuracy against the step. */
#include "train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void history_add(history *h, long step, float loss) {
    if (h->n == h->cap) {
        h->cap = h->cap ? 2 * h->cap : 1024;
        long *s = realloc(h->steps, (size_t)h->cap * sizeof *s);
        float *l = realloc(h->loss, (size_t)h->cap * sizeof *l);
        if (!s || !l) { /* the curve is a convenience: keep what we have */
            if (s) h->steps = s;
            if (l) h->loss = l;
            h->cap = h->n;
            return;
        }
        h->steps = s, h->loss = l;
    }
    h->steps[h->n] = step, h->loss[h->n++] = loss;
}

void history_eval(history *h, long step, float acc) {
    if (h->n_eval == h->cap_eval) {
        h->cap_eval = h->cap_eval ? 2 * h->cap_eval : 64;
        long *s = realloc(h->eval_steps, (size_t)h->cap_eval * sizeof *s);
        float *a = realloc(h->acc, (size_t)h->cap_eval * sizeof *a);
        if (!s || !a) {
            if (s) h->eval_steps = s;
            if (a) h->acc = a;
            h->cap_eval = h->n_eval;
            return;
        }
        h->eval_steps = s, h->acc = a;
    }
    h->eval_steps[h->n_eval] = step, h->acc[h->n_eval++] = acc;
}

void history_free(history *h) {
    free(h->steps), free(h->loss), free(h->eval_steps), free(h->acc);
    memset(h, 0, sizeof *h);
}

static void panel(FILE *f, int x0, const char *title, const long *xs, const float *ys, int n, bool smooth,
                  float ymin, float ymax, const char *colour, long xmax) {
    const int W = 420, H = 260, L = 50, B = 30;
    fprintf(f, "<g transform=\"translate(%d,20)\">\n", x0);
    fprintf(f, "<text x=\"%d\" y=\"0\" font-size=\"14\" font-family=\"sans-serif\">%s</text>\n", L, title);
    fprintf(f, "<rect x=\"%d\" y=\"10\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#888\"/>\n", L, W - L, H - B);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\" text-anchor=\"end\">%.3g</text>\n", L - 4, 20, ymax);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\" text-anchor=\"end\">%.3g</text>\n", L - 4, H - B + 10, ymin);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\">0</text>\n", L, H - B + 24);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\" text-anchor=\"end\">step %ld</text>\n", W, H - B + 24, xmax);
    if (n > 0 && ymax > ymin) {
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%s\" points=\"", colour, smooth ? "0.6" : "2");
        double run = ys[0];
        for (int pass = 0; pass < (smooth ? 2 : 1); pass++) {
            if (pass) fprintf(f, "\"/>\n<polyline fill=\"none\" stroke=\"black\" stroke-width=\"1.5\" points=\"");
            for (int i = 0; i < n; i++) {
                double y = ys[i];
                if (pass) y = run = 0.98 * run + 0.02 * ys[i]; /* running mean */
                double px = L + (double)(W - L) * xs[i] / (double)(xmax > 0 ? xmax : 1);
                double py = 10 + (H - B) * (1.0 - (y - ymin) / (ymax - ymin));
                fprintf(f, "%.1f,%.1f ", px, py);
            }
        }
        fprintf(f, "\"/>\n");
        if (!smooth)
            for (int i = 0; i < n; i++)
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n",
                        L + (double)(W - L) * xs[i] / (double)(xmax > 0 ? xmax : 1),
                        10 + (H - B) * (1.0 - (ys[i] - ymin) / (ymax - ymin)), colour);
    }
    fprintf(f, "</g>\n");
}

int write_curve_svg(const char *path, const long *steps, const float *loss, int n, const long *eval_steps,
                    const float *acc, int n_eval, long total_steps, clipc_error *err) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return clipc_fail(err, "%s: cannot write", tmp);
    float lmin = INFINITY, lmax = -INFINITY;
    for (int i = 0; i < n; i++)
        if (isfinite(loss[i])) lmin = fminf(lmin, loss[i]), lmax = fmaxf(lmax, loss[i]);
    if (n == 0) lmin = 0, lmax = 1;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"320\" viewBox=\"0 0 900 320\">\n"
               "<rect width=\"900\" height=\"320\" fill=\"white\"/>\n");
    panel(f, 0, "training loss (grey: per step, black: running mean)", steps, loss, n, true, lmin, lmax, "#aaa",
          total_steps);
    panel(f, 450, "zero-shot top-1 on the test set", eval_steps, acc, n_eval, false, 0.0f, 1.0f, "#1565c0",
          total_steps);
    fprintf(f, "</svg>\n");
    if (fclose(f) != 0 || rename(tmp, path) != 0) return clipc_fail(err, "%s: cannot write", path);
    return 0;
}
