/* A main() for libFuzzer targets that replays inputs without libFuzzer, so
 * every `make check` (and the sanitizer build) runs each target over its
 * seed corpus and over every crash ever committed to it.
 *
 *   replay-<target> PATH...
 *
 * Each PATH is a file (one input) or a directory, read recursively in
 * sorted order. Every file is read into a buffer of exactly its size, so
 * AddressSanitizer catches a read one byte past the end, and passed once to
 * LLVMFuzzerTestOneInput(). The name of each input is printed before it
 * runs, so the log of a crash names the culprit. Exit status: 0 when every
 * input ran, 1 when a path could not be read (or held no input at all),
 * 2 on a usage error; a crash in the target aborts as it would under
 * libFuzzer. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "macro.h"

/* Larger inputs are refused rather than read: libFuzzer's own default
 * -max_len is far below this, so such a file is not a corpus entry. */
#define REPLAY_MAX_INPUT_SIZE (16U * 1024U * 1024U)
/* Directory nesting followed; a corpus is flat, so this only stops loops. */
#define REPLAY_MAX_DEPTH 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional in a target, as under libFuzzer. */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

struct replay_stats {
        unsigned long inputs;
        unsigned long errors;
};

/* Read all of fd into a malloc()ed buffer of exactly the file's size.
 * Returns 0, or -EFBIG when it exceeds REPLAY_MAX_INPUT_SIZE, or a negative
 * errno from read(). */
static int read_input(int fd, uint8_t **ret_data, size_t *ret_size)
{
        _cleanup_free_ uint8_t *data = NULL;
        struct stat st;
        size_t size, done = 0;

        if (fstat(fd, &st) < 0)
                return negative_errno();
        if (st.st_size < 0 || (uint64_t)st.st_size > REPLAY_MAX_INPUT_SIZE)
                return -EFBIG;
        size = (size_t)st.st_size;

        /* malloc(0) still returns a distinct pointer, as libFuzzer passes. */
        data = malloc(size > 0 ? size : 1);
        if (!data)
                return -ENOMEM;

        while (done < size) {
                ssize_t n = read(fd, data + done, size - done);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return negative_errno();
                if (n == 0)
                        return -EIO; /* shrank while being read */
                done += (size_t)n;
        }

        *ret_data = TAKE_PTR(data);
        *ret_size = size;
        return 0;
}

static void replay_path(const char *path, unsigned depth, struct replay_stats *stats);

static void replay_directory(const char *path, unsigned depth, struct replay_stats *stats)
{
        struct dirent **entries = NULL;
        int n;

        if (depth >= REPLAY_MAX_DEPTH) {
                fprintf(stderr, "%s: directories nested too deep, skipped\n", path);
                stats->errors++;
                return;
        }

        n = scandir(path, &entries, NULL, alphasort);
        if (n < 0) {
                fprintf(stderr, "%s: %s\n", path, strerror(errno));
                stats->errors++;
                return;
        }

        for (int i = 0; i < n; i++) {
                const char *name = entries[i]->d_name;
                _cleanup_free_ char *child = NULL;

                if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
                        continue;
                if (asprintf(&child, "%s/%s", path, name) < 0) {
                        child = NULL; /* undefined after a failed asprintf() */
                        fprintf(stderr, "%s/%s: out of memory\n", path, name);
                        stats->errors++;
                        continue;
                }
                replay_path(child, depth + 1, stats);
        }

        for (int i = 0; i < n; i++)
                free(entries[i]);
        free(entries);
}

static void replay_path(const char *path, unsigned depth, struct replay_stats *stats)
{
        _cleanup_close_ int fd = -1;
        _cleanup_free_ uint8_t *data = NULL;
        struct stat st;
        size_t size;
        int r;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &st) < 0) {
                fprintf(stderr, "%s: %s\n", path, strerror(errno));
                stats->errors++;
                return;
        }

        if (S_ISDIR(st.st_mode)) {
                close(TAKE_FD(fd));
                replay_directory(path, depth, stats);
                return;
        }
        if (!S_ISREG(st.st_mode)) {
                fprintf(stderr, "%s: not a regular file or directory\n", path);
                stats->errors++;
                return;
        }

        r = read_input(fd, &data, &size);
        if (r < 0) {
                fprintf(stderr, "%s: %s\n", path, strerror(-r));
                stats->errors++;
                return;
        }

        fprintf(stderr, "Running: %s (%zu bytes)\n", path, size);
        (void)LLVMFuzzerTestOneInput(data, size);
        stats->inputs++;
}

int main(int argc, char **argv)
{
        struct replay_stats stats = {0};

        if (argc < 2) {
                fprintf(stderr, "Usage: %s FILE|DIRECTORY...\n", argv[0]);
                return 2;
        }

        if (LLVMFuzzerInitialize)
                (void)LLVMFuzzerInitialize(&argc, &argv);

        for (int i = 1; i < argc; i++)
                replay_path(argv[i], 0, &stats);

        fprintf(stderr, "Executed %lu inputs, %lu unreadable paths\n", stats.inputs, stats.errors);
        if (stats.errors > 0 || stats.inputs == 0)
                return 1;
        return 0;
}
