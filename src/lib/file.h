/* Reading a whole file with a bound: the configuration, credentials,
 * alertbotd's policy and state all go through here. */
#pragma once

#include <stddef.h>

enum {
        FILE_READ_DEVICES = 1 << 0, /* accept a character device (--config /dev/null) */
        FILE_READ_WIPE = 1 << 1,    /* zero the buffer freed on error (secrets) */
};

/* Read the whole of path (dir_fd and open_flags as for openat()), at most
 * max bytes, into a malloc()ed buffer with a NUL after the data (not
 * counted in *ret_size). Returns 0, -EISDIR for a directory, -EINVAL for
 * anything else but a regular file (or a character device, with
 * FILE_READ_DEVICES), -EFBIG when larger than max, -EIO when it grew while
 * being read, -ENOMEM, or the errno of open or read. */
int file_read_all(int dir_fd, const char *path, int open_flags, unsigned flags, size_t max,
                  char **ret, size_t *ret_size);
