// half: float16 and bfloat16 conversions (round to nearest even, as the hardware).
#ifndef GIVT_HALF_H
#define GIVT_HALF_H

#include <stdint.h>

float half_f16_to_f32(uint16_t h);
uint16_t half_f32_to_f16(float f);   // round to nearest even
float half_bf16_to_f32(uint16_t h);
uint16_t half_f32_to_bf16(float f);  // round to nearest even

#endif
