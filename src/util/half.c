/* half.c — IEEE half conversions for checkpoints stored in
 * 16-bit floats (OpenAI's released weights are F16). bfloat16, the top half
 * of a float, converts inline: see internal.h. */
#include "../internal.h"

#include <string.h>

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) {
                mant <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Round to nearest even, as numpy's astype(float16). */
uint16_t f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t mant = x & 0x7fffff;
    if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        mant |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = 1u << (shift - 1);
        uint32_t rounded = (mant + half - 1 + ((mant >> shift) & 1)) >> shift;
        return (uint16_t)(sign | rounded);
    }
    uint32_t rounded = mant + 0xfff + ((mant >> 13) & 1);
    if (rounded & 0x800000) {
        rounded = 0;
        exp++;
        if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    }
    return (uint16_t)(sign | ((uint32_t)exp << 10) | (rounded >> 13));
}
