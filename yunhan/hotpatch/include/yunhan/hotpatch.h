/*
 * Yunhan application hot patching: the one header a patch source needs.
 *
 *   #include <yunhan/hotpatch.h>
 *
 *   static int compute_v2(int x) { return 3 * x; }
 *   YUNHAN_PATCH(compute, compute_v2);
 *
 * Each YUNHAN_PATCH(old_symbol, new_function) records one replacement: every call
 * to `old_symbol` in the target (the binary or library given to `yunhan hotpatch
 * build --target`) will be redirected to `new_function`.  The record is a pair of
 * NUL-terminated names in the `.yunhan.patches` section; `yunhan hotpatch build`
 * reads it, checks `old_symbol` exists in the target and embeds the manifest.
 *
 * `new_function` must have the same signature as `old_symbol` (the loader cannot
 * check C types).  The reference below makes the compiler fail if it does not
 * exist and keeps it from being discarded when it is static.
 *
 * Do not put constructors or destructors in a patch: it is loaded by the target's
 * own dlopen from a hijacked thread, and code there runs in that thread's context.
 */
#ifndef YUNHAN_HOTPATCH_H
#define YUNHAN_HOTPATCH_H

#define YUNHAN_HOTPATCH_CAT_(a, b) a##b
#define YUNHAN_HOTPATCH_CAT(a, b) YUNHAN_HOTPATCH_CAT_(a, b)

#define YUNHAN_PATCH(old_symbol, new_function)                                          \
    __attribute__((used, section(".yunhan.patches"), aligned(1))) static const char     \
        YUNHAN_HOTPATCH_CAT(yunhan_patch_record_, __LINE__)[] =                         \
            #old_symbol "\0" #new_function;                                             \
    __attribute__((used)) static const void *const YUNHAN_HOTPATCH_CAT(                 \
        yunhan_patch_ref_, __LINE__) = (const void *)&(new_function)

#endif /* YUNHAN_HOTPATCH_H */
