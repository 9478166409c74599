/* A shared library the tests build and patch in a live process. */
__attribute__((noipa)) int demo_value(int x) {
    int r = x;
    for (int i = 0; i < 3; i++) r += 33 + (x & i);
    return r;
}
