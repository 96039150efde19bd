#include "test.h"
void test_tokenizer(void) {}
