/* replay.h - what every fuzz target shares: the CHECK() invariant macro and,
 * built without GH_LIBFUZZER, a main() that replays every file under the paths
 * it is given (the corpus, in the fuzz suite) and fails when none was found.
 * Include it once, from the target's .c file. */
#ifndef GH_FUZZ_REPLAY_H
#define GH_FUZZ_REPLAY_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#ifndef GH_LIBFUZZER
static int replay_one(const char *path, size_t *count)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        perror(path);
        return 1;
    }
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        int rc = 0;
        if (d == NULL) {
            perror(path);
            return 1;
        }
        while ((e = readdir(d)) != NULL) {
            char sub[4096];
            if (e->d_name[0] != '.') {
                snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
                rc |= replay_one(sub, count);
            }
        }
        closedir(d);
        return rc;
    }
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        return 1;
    }
    size_t cap = (size_t)st.st_size + 1;
    uint8_t *buf = malloc(cap);
    size_t n = buf ? fread(buf, 1, cap, f) : 0;
    fclose(f);
    if (buf == NULL) {
        return 1;
    }
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    (*count)++;
    return 0;
}

int main(int argc, char **argv)
{
    size_t count = 0;
    int rc = 0;
    for (int i = 1; i < argc; i++) {
        rc |= replay_one(argv[i], &count);
    }
    printf("%s: %zu inputs replayed\n", argv[0], count);
    return rc || count == 0;
}
#endif

#endif
