#include "test.h"
void test_util(void) {}
