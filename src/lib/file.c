#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "macro.h"

int file_read_all(int dir_fd, const char *path, int open_flags, unsigned flags, size_t max,
                  char **ret, size_t *ret_size)
{
        _cleanup_close_ int fd = -1;
        size_t size = 0, capacity;
        struct stat st;
        char *buf;
        int r = 0;

        fd = openat(dir_fd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY | open_flags);
        if (fd < 0)
                return negative_errno();
        if (fstat(fd, &st) < 0)
                return negative_errno();
        if (S_ISDIR(st.st_mode))
                return -EISDIR;
        /* A device that keeps producing data fails below as a file that
         * grew. */
        if (!S_ISREG(st.st_mode) && !(S_ISCHR(st.st_mode) && (flags & FILE_READ_DEVICES)))
                return -EINVAL;
        if ((uint64_t)st.st_size > max)
                return -EFBIG;

        /* Room for one byte more than stat() promised, to notice a file
         * that grew, and the NUL. */
        capacity = (size_t)st.st_size + 2;
        buf = malloc(capacity);
        if (!buf)
                return -ENOMEM;
        while (size < capacity - 1) {
                ssize_t n = read(fd, buf + size, capacity - 1 - size);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r = negative_errno();
                        break;
                }
                if (n == 0)
                        break;
                size += (size_t)n;
        }
        if (r == 0 && size == capacity - 1)
                r = size > max ? -EFBIG : -EIO; /* it grew while being read */
        if (r < 0) {
                if (flags & FILE_READ_WIPE)
                        explicit_bzero(buf, capacity);
                free(buf);
                return r;
        }

        buf[size] = '\0';
        *ret = buf;
        *ret_size = size;
        return 0;
}
