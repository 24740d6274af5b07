/* policy/admin_record.c - an administrative act (a session revoked, a device enrolled
 * or revoked) as a decision log record: who ran the command (the OS account, and the
 * account behind sudo), from where (host, terminal, SSH client), what and when. The
 * record joins the same hash chain as the proxy's decisions (decision_log_admin). */
#include <arpa/inet.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "policy.h"

/* The account that ran the command: "alice", or "alice via sudo as root". SUDO_USER
 * is only believed together with another effective account (any account can set the
 * variable, but then it is the one recorded as running the command). */
static void actor_name(char *out, size_t size)
{
    char self[64];
    struct passwd pw, *res = NULL;
    char buf[1024];
    uid_t uid = getuid();
    if (getpwuid_r(uid, &pw, buf, sizeof buf, &res) == 0 && res != NULL) {
        snprintf(self, sizeof self, "%s", res->pw_name);
    } else {
        snprintf(self, sizeof self, "uid %lu", (unsigned long)uid);
    }
    const char *sudo = getenv("SUDO_USER");
    if (sudo != NULL && *sudo != '\0' && strcmp(sudo, self) != 0) {
        snprintf(out, size, "%.64s via sudo as %s", sudo, self);
    } else {
        snprintf(out, size, "%s", self);
    }
}

/* "host gh1, tty /dev/pts/3, ssh 10.0.0.5": where the command was typed. The SSH
 * client address also goes to client_ip (ip, size INET6_ADDRSTRLEN). */
static void origin(char *out, size_t size, char *ip)
{
    char host[256] = "?";
    (void)gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    const char *tty = NULL;
    for (int fd = 0; fd <= 2 && !tty; fd++) {
        tty = ttyname(fd);
    }
    ip[0] = '\0';
    const char *ssh = getenv("SSH_CONNECTION");
    if (!ssh || !*ssh) {
        ssh = getenv("SSH_CLIENT");
    }
    if (ssh && *ssh) {
        size_t n = strcspn(ssh, " ");
        char a[INET6_ADDRSTRLEN];
        unsigned char bin[16];
        if (n < sizeof a) {
            memcpy(a, ssh, n);
            a[n] = '\0';
            if (inet_pton(AF_INET, a, bin) == 1 || inet_pton(AF_INET6, a, bin) == 1) {
                memcpy(ip, a, n + 1);
            }
        }
    }
    snprintf(out, size, "host %s, %s%s%s%s", host, tty ? "tty " : "no tty", tty ? tty : "",
             ip[0] ? ", ssh " : "", ip);
}

int policy_admin_log(const char *conf_file, const struct admin_act *act, char *note,
                     size_t note_size)
{
    struct conf_diag d = { 0 };
    struct conf_doc *doc = conf_doc_load(conf_file, &d);
    struct decision_log_conf c = { 0 };
    bool ok = doc && d.count == 0 && decision_log_conf_parse(doc->root, conf_file, &d, &c);
    bool configured = ok && conf_get(doc->root, "decision_log") != NULL;
    conf_doc_free(doc);
    if (!ok) {
        snprintf(note, note_size, "the configuration cannot be read (%zu problems)", d.count);
        conf_diag_fini(&d);
        decision_log_conf_fini(&c);
        return -1;
    }
    conf_diag_fini(&d);
    if (!configured) {
        decision_log_conf_fini(&c);
        return 1;
    }
    char actor[160], from[512], ip[INET6_ADDRSTRLEN], rid[40];
    unsigned char rnd[8];
    actor_name(actor, sizeof actor);
    origin(from, sizeof from, ip);
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
        memset(rnd, 0, sizeof rnd);
        rnd[0] = (unsigned char)getpid();
    }
    snprintf(rid, sizeof rid, "admin-%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2],
             rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct decision_record rec = {
        .ts_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000,
        .request_id = rid,
        .decision = "admin",
        .rule = act->action,
        .reason = act->reason,
        .user = act->user,
        .email = act->email,
        .idp = act->idp,
        .client_ip = ip[0] ? ip : NULL,
        .kind = "admin",
        .admin_action = act->action,
        .admin_actor = actor,
        .admin_from = from,
        .admin_target = act->target,
    };
    struct err err = { 0 };
    uint64_t seq = 0;
    int rc = decision_log_admin(&c, &rec, 5000, &seq, &err);
    decision_log_conf_fini(&c);
    if (rc != 0) {
        snprintf(note, note_size, "%s", err.msg);
        return -1;
    }
    if (seq) {
        snprintf(note, note_size, "logged as decision record %llu (%s)", (unsigned long long)seq,
                 rid);
    } else {
        snprintf(note, note_size,
                 "handed to the running server's decision log (%s); it is "
                 "chained when the server's writer runs",
                 rid);
    }
    return 0;
}
