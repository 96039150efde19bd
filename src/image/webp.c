/* webp.c — WebP into the mode Pillow 9.4 gives it on Image.open.
 *
 * Pillow (with libwebpdemux, as Debian builds it) opens every WebP file,
 * still or animated, through WebPAnimDecoder with its default options
 * (RGBA output) and shows the first frame: mode RGBA when the bitstream
 * has alpha, else RGBX, which it calls RGB. The same library and calls
 * here give the same pixels. */
#include "../internal.h"

#include <stdlib.h>
#include <string.h>
#include <webp/decode.h>
#include <webp/demux.h>

int decode_webp(const unsigned char *data, size_t len, const char *name, image *out, clipc_error *err) {
    WebPBitstreamFeatures features;
    if (WebPGetFeatures(data, len, &features) != VP8_STATUS_OK) return clipc_fail(err, "%s: corrupt WebP", name);
    if (image_check_size(name, features.width, features.height, err)) return -1;
    WebPData source = {data, len};
    WebPAnimDecoder *dec = WebPAnimDecoderNew(&source, NULL);
    if (!dec) return clipc_fail(err, "%s: corrupt WebP", name);
    WebPAnimInfo info;
    uint8_t *frame = NULL;
    int timestamp = 0;
    int rc = WebPAnimDecoderGetInfo(dec, &info) ? image_check_size(name, info.canvas_width, info.canvas_height, err)
                                                : clipc_fail(err, "%s: corrupt WebP", name);
    if (rc == 0 && !WebPAnimDecoderGetNext(dec, &frame, &timestamp)) rc = clipc_fail(err, "%s: corrupt WebP", name);
    if (rc) {
        WebPAnimDecoderDelete(dec);
        return rc;
    }
    int w = (int)info.canvas_width, h = (int)info.canvas_height, channels = features.has_alpha ? 4 : 3;
    unsigned char *pixels = malloc((size_t)w * h * channels);
    if (!pixels) {
        WebPAnimDecoderDelete(dec);
        return clipc_fail(err, "%s: out of memory", name);
    }
    if (channels == 4) memcpy(pixels, frame, (size_t)w * h * 4);
    else /* RGBX -> RGB */
        for (size_t i = 0; i < (size_t)w * h; i++) memcpy(pixels + 3 * i, frame + 4 * i, 3);
    WebPAnimDecoderDelete(dec); /* owns frame */
    *out = (image){.mode = channels == 4 ? IM_RGBA : IM_RGB, .width = w, .height = h, .channels = channels,
                   .pixels = pixels};
    return 0;
}
