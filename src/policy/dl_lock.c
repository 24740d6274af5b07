/* policy/dl_lock.c - the decision log writer's lock: a flock on a file next to the
 * database, held by the process that writes the log (a server, or a command line
 * tool chaining a record while no server runs). */
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include "dl_writer.h"

/* The writer's lock, next to the database: held by the process that writes the log,
 * so that a command line tool knows whether to hand its record over or chain it
 * itself. Returns the fd, or -1 when another process holds it (busy) or on error. */
int dl_writer_lock(const char *sqlite, unsigned wait_ms, bool *busy)
{
    char *path = xasprintf("%s-writer.lock", sqlite);
    int fd = open(path, O_RDONLY | O_CREAT | O_CLOEXEC, 0640);
    free(path);
    *busy = false;
    if (fd < 0) {
        return -1;
    }
    for (unsigned waited = 0;; waited += 20) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
            return fd;
        }
        if (errno != EWOULDBLOCK || waited >= wait_ms) {
            *busy = errno == EWOULDBLOCK;
            close(fd);
            return -1;
        }
        usleep(20000);
    }
}
