/* Process metrics (process_*, as the Prometheus client libraries name
 * them, read from /proc at every scrape) and vigil_build_info. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "macro.h"
#include "metrics-internal.h"

/* ---- process metrics ---- */

struct process_metrics {
        struct metric *cpu_seconds;
        struct metric *resident_bytes;
        struct metric *virtual_bytes;
        struct metric *open_fds;
        struct metric *max_fds;
        struct metric *start_time;
        long clock_ticks;
        long page_size;
};

/* Read a small /proc file into buf, NUL-terminated. */
static int read_proc_file(const char *path, char *buf, size_t size)
{
        _cleanup_close_ int fd = -1;
        size_t n = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return negative_errno();
        while (n < size - 1) {
                ssize_t k = read(fd, buf + n, size - 1 - n);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (k == 0)
                        break;
                n += (size_t)k;
        }
        buf[n] = '\0';
        return 0;
}

/* Fields 14 (utime), 15 (stime), 22 (starttime), 23 (vsize) and 24 (rss)
 * of /proc/self/stat, counted from 1 (the pid). */
struct proc_stat {
        unsigned long long utime, stime, starttime, vsize, rss;
};

static int read_proc_self_stat(struct proc_stat *ret)
{
        char buf[2048];
        unsigned long long field[25] = {0};
        const char *p;
        int r;

        r = read_proc_file("/proc/self/stat", buf, sizeof(buf));
        if (r < 0)
                return r;
        /* The command name may contain anything, ')' included. */
        p = strrchr(buf, ')');
        if (!p)
                return -EIO;
        p++;
        /* p now points at " S ppid ...": field 3 is the state letter. */
        while (*p == ' ')
                p++;
        if (!*p)
                return -EIO;
        p++;
        for (int i = 4; i <= 24; i++) {
                char *end;

                errno = 0;
                field[i] = strtoull(p, &end, 10);
                if (end == p || errno != 0)
                        return -EIO;
                p = end;
        }
        *ret = (struct proc_stat){
                .utime = field[14],
                .stime = field[15],
                .starttime = field[22],
                .vsize = field[23],
                .rss = field[24],
        };
        return 0;
}

static int read_boot_time(unsigned long long *ret)
{
        char buf[16384];
        const char *p;
        int r;

        r = read_proc_file("/proc/stat", buf, sizeof(buf));
        if (r < 0)
                return r;
        p = strstr(buf, "\nbtime ");
        if (!p)
                return -EIO;
        *ret = strtoull(p + strlen("\nbtime "), NULL, 10);
        return 0;
}

static int count_open_fds(void)
{
        DIR *d;
        struct dirent *de;
        int n = 0;

        d = opendir("/proc/self/fd");
        if (!d)
                return negative_errno();
        while ((de = readdir(d)))
                if (de->d_name[0] != '.' && atoi(de->d_name) != dirfd(d))
                        n++;
        closedir(d);
        return n;
}

static void process_collect(struct metrics_registry *r, void *userdata)
{
        struct process_metrics *p = userdata;
        struct proc_stat st;
        struct rlimit rl;
        int n;

        if (read_proc_self_stat(&st) >= 0) {
                metrics_counter_set(p->cpu_seconds,
                                    (double)(st.utime + st.stime) / (double)p->clock_ticks);
                metrics_gauge_set(p->virtual_bytes, (double)st.vsize);
                metrics_gauge_set(p->resident_bytes, (double)st.rss * (double)p->page_size);
        }
        n = count_open_fds();
        if (n >= 0)
                metrics_gauge_set(p->open_fds, n);
        if (getrlimit(RLIMIT_NOFILE, &rl) >= 0)
                metrics_gauge_set(p->max_fds,
                                  rl.rlim_cur == RLIM_INFINITY ? INFINITY : (double)rl.rlim_cur);
}

int metrics_register_process(struct metrics_registry *r)
{
        static const struct {
                enum metric_type type;
                const char *name;
                const char *help;
        } specs[] = {
                {METRIC_COUNTER, "process_cpu_seconds_total",
                 "Total user and system CPU time spent in seconds."},
                {METRIC_GAUGE, "process_resident_memory_bytes", "Resident memory size in bytes."},
                {METRIC_GAUGE, "process_virtual_memory_bytes", "Virtual memory size in bytes."},
                {METRIC_GAUGE, "process_open_fds", "Number of open file descriptors."},
                {METRIC_GAUGE, "process_max_fds", "Maximum number of open file descriptors."},
                {METRIC_GAUGE, "process_start_time_seconds",
                 "Start time of the process since unix epoch in seconds."},
        };
        _cleanup_free_ struct process_metrics *p = NULL;
        struct metric *children[ELEMENTSOF(specs)];
        unsigned long long btime;
        struct proc_stat st;
        int ret = 0;

        if (!r)
                return -EINVAL;
        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->clock_ticks = sysconf(_SC_CLK_TCK);
        p->page_size = sysconf(_SC_PAGESIZE);
        if (p->clock_ticks <= 0 || p->page_size <= 0)
                return -EIO;
        ret = read_proc_self_stat(&st);
        if (ret < 0)
                return ret;
        ret = read_boot_time(&btime);
        if (ret < 0)
                return ret;

        pthread_mutex_lock(&r->lock);
        for (size_t i = 0; i < ELEMENTSOF(specs); i++)
                if (metrics_name_is_taken(r, specs[i].type, specs[i].name))
                        ret = -EEXIST;
        pthread_mutex_unlock(&r->lock);
        if (ret < 0)
                return ret;

        for (size_t i = 0; i < ELEMENTSOF(specs); i++) {
                struct metric_family *f = metrics_family_create(r, specs[i].type, specs[i].name,
                                                                specs[i].help, NULL, NULL, 0);

                children[i] = metrics_child(f, NULL);
                if (!children[i])
                        return -ENOMEM;
        }
        p->cpu_seconds = children[0];
        p->resident_bytes = children[1];
        p->virtual_bytes = children[2];
        p->open_fds = children[3];
        p->max_fds = children[4];
        p->start_time = children[5];
        metrics_gauge_set(p->start_time,
                          (double)btime + (double)st.starttime / (double)p->clock_ticks);

        ret = metrics_add_collector(r, process_collect, p, free);
        if (ret < 0)
                return ret;
        TAKE_PTR(p);
        return 0;
}

int metrics_register_build_info(struct metrics_registry *r, const char *version)
{
        struct metric_family *f;
        const char *labels[] = {"version", NULL};

        if (!r || !version)
                return -EINVAL;
        f = metrics_gauge_new(r, "vigil_build_info",
                              "A metric with a constant '1' value labeled by the version vigil "
                              "was built from.",
                              labels);
        if (!f) {
                int ret;

                pthread_mutex_lock(&r->lock);
                ret = metrics_name_is_taken(r, METRIC_GAUGE, "vigil_build_info") ? -EEXIST
                                                                                 : -ENOMEM;
                pthread_mutex_unlock(&r->lock);
                return ret;
        }
        metrics_gauge_set(metrics_child1(f, version), 1);
        return 0;
}
