/* proxy/sock.c - the socket layer under both halves of a connection (conn.c,
 * the client; forward.c, the upstream): one read and one write call for a
 * plain or a TLS socket, with OpenSSL's want-read/want-write turned into
 * errno EAGAIN plus a flag for the event mask, and the flush loop of a
 * connection's output buffer. Knows nothing of HTTP or of requests. */
#include <errno.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#include <openssl/err.h>

#include "io.h"

uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* An SSL_read (reading) or SSL_write result r <= 0 as -1 with errno EAGAIN
 * when it would block (the flag for the other direction set when it waits for
 * that one), 0 for a clean TLS close of the read side, else -1 with EPROTO
 * (read) or EPIPE (write). */
static ssize_t ssl_result(struct sock *s, int r, bool reading)
{
    int e = SSL_get_error(s->ssl, r);

    if (e == (reading ? SSL_ERROR_WANT_READ : SSL_ERROR_WANT_WRITE)) {
        errno = EAGAIN;
        return -1;
    }
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        if (reading) {
            s->rd_wants_write = true;
        } else {
            s->wr_wants_read = true;
        }
        errno = EAGAIN;
        return -1;
    }
    if (e == SSL_ERROR_ZERO_RETURN && reading) {
        return 0;
    }
    errno = reading ? EPROTO : EPIPE;
    return -1;
}

/* recv() or send() on a plain socket, again after EINTR. */
static ssize_t plain_io(int fd, char *p, size_t n, bool reading)
{
    ssize_t r;
    do {
        r = reading ? recv(fd, p, n, 0) : send(fd, p, n, MSG_NOSIGNAL);
    } while (r < 0 && errno == EINTR);
    return r;
}

static int clamp_int(size_t n)
{
    return (int)(n > INT32_MAX ? INT32_MAX : n);
}

ssize_t sock_read(struct sock *s, char *p, size_t n)
{
    if (!s->ssl) {
        return plain_io(s->fd, p, n, true);
    }
    s->rd_wants_write = false;
    ERR_clear_error();
    int r = SSL_read(s->ssl, p, clamp_int(n));
    return r > 0 ? r : ssl_result(s, r, true);
}

ssize_t sock_write(struct sock *s, const char *p, size_t n)
{
    if (!s->ssl) {
        return plain_io(s->fd, (char *)p, n, false);
    }
    s->wr_wants_read = false;
    ERR_clear_error();
    int r = SSL_write(s->ssl, p, clamp_int(n));
    return r > 0 ? r : ssl_result(s, r, false);
}

bool sock_has_pending(const struct sock *s)
{
    return s->ssl && SSL_has_pending(s->ssl);
}

int sock_flush(struct sock *s, struct buf *b)
{
    bool wrote = false;

    while (buf_pending(b) > 0) {
        ssize_t n = sock_write(s, b->p + b->off, buf_pending(b));
        if (n > 0) {
            buf_consume(b, (size_t)n);
            wrote = true;
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            break;
        }
        return -1;
    }
    return wrote ? 1 : 0;
}
