#include "test.h"
void test_image(void) {}
