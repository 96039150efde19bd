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

/* The window of the loss's running mean: a trailing mean over 1/20 of the
 * run's points (2..50), so that a short run's mean does not lag behind its
 * loss (an exponential average of 50 steps would span a 40-step run). */
int curve_mean_window(int n) {
    int w = n / 20;
    return w < 2 ? (n < 2 ? 1 : 2) : w > 50 ? 50 : w;
}

static double panel_x(long x, long xmax, int L, int W) { return L + (double)(W - L) * x / (double)(xmax > 0 ? xmax : 1); }
static double panel_y(double y, float ymin, float ymax, int H, int B) { return 10 + (H - B) * (1.0 - (y - ymin) / (ymax - ymin)); }

/* One panel: axes with five ticks on each (values at the quarters; the
 * accuracy panel in percent), the points as a line (smooth: with the
 * running mean over them) or as dots with the last value written out. */
static void panel(FILE *f, int x0, const char *title, const long *xs, const float *ys, int n, bool smooth,
                  float ymin, float ymax, const char *colour, long xmax, bool percent) {
    const int W = 420, H = 260, L = 50, B = 30;
    fprintf(f, "<g transform=\"translate(%d,20)\" font-family=\"sans-serif\">\n", x0);
    fprintf(f, "<text x=\"%d\" y=\"0\" font-size=\"14\">%s</text>\n", L, title);
    fprintf(f, "<rect x=\"%d\" y=\"10\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#888\"/>\n", L, W - L, H - B);
    for (int k = 0; k <= 4; k++) { /* quarters: grid lines and labels */
        double v = ymin + (ymax - ymin) * k / 4.0, py = panel_y(v, ymin, ymax, H, B);
        long step = xmax * k / 4;
        double px = panel_x(step, xmax, L, W);
        if (k > 0 && k < 4)
            fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n"
                       "<line x1=\"%.1f\" y1=\"10\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/>\n",
                    L, py, W, py, px, px, H - B + 10);
        if (percent) fprintf(f, "<text x=\"%d\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\">%.0f%%</text>\n", L - 4, py + 4, 100 * v);
        else fprintf(f, "<text x=\"%d\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\">%.3g</text>\n", L - 4, py + 4, v);
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" font-size=\"11\" text-anchor=\"%s\">%ld</text>\n", px, H - B + 24,
                k == 0 ? "start" : k == 4 ? "end" : "middle", step);
    }
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\" text-anchor=\"middle\">step</text>\n", (L + W) / 2, H - B + 38);
    if (n > 0 && ymax > ymin) {
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%s\" points=\"", colour, smooth ? "0.6" : "2");
        for (int i = 0; i < n; i++) fprintf(f, "%.1f,%.1f ", panel_x(xs[i], xmax, L, W), panel_y(ys[i], ymin, ymax, H, B));
        fprintf(f, "\"/>\n");
        if (smooth) { /* the trailing mean over curve_mean_window(n) points */
            int w = curve_mean_window(n);
            double sum = 0;
            fprintf(f, "<polyline fill=\"none\" stroke=\"black\" stroke-width=\"1.5\" points=\"");
            for (int i = 0; i < n; i++) {
                sum += ys[i] - (i >= w ? ys[i - w] : 0);
                fprintf(f, "%.1f,%.1f ", panel_x(xs[i], xmax, L, W), panel_y(sum / (i + 1 < w ? i + 1 : w), ymin, ymax, H, B));
            }
            fprintf(f, "\"/>\n");
        } else {
            for (int i = 0; i < n; i++)
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", panel_x(xs[i], xmax, L, W),
                        panel_y(ys[i], ymin, ymax, H, B), colour);
            double v = ys[n - 1];
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\" fill=\"%s\">", panel_x(xs[n - 1], xmax, L, W) - 5,
                    panel_y(v, ymin, ymax, H, B) + (v > (ymin + ymax) / 2 ? 16 : -8), colour);
            if (percent) fprintf(f, "%.2f%%</text>\n", 100 * v);
            else fprintf(f, "%.4g</text>\n", v);
        }
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
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"330\" viewBox=\"0 0 900 330\">\n"
               "<rect width=\"900\" height=\"330\" fill=\"white\"/>\n");
    char title[128];
    snprintf(title, sizeof title, "training loss (grey: per step, black: mean of the last %d)", curve_mean_window(n));
    panel(f, 0, title, steps, loss, n, true, lmin, lmax, "#aaa", total_steps, false);
    panel(f, 450, "zero-shot top-1 on the test set", eval_steps, acc, n_eval, false, 0.0f, 1.0f, "#1565c0",
          total_steps, true);
    fprintf(f, "</svg>\n");
    if (fclose(f) != 0 || rename(tmp, path) != 0) return clipc_fail(err, "%s: cannot write", path);
    return 0;
}
